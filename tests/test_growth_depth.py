"""Depth operators: exact index maps, exact function preservation, noise, and the grow command."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, small_config
from hypothesis import given, settings
from hypothesis import strategies as st

from growth.grow import OPERATORS
from growth.operators import add_noise, stack, zero_depth
from lit_gpt import GPT, Config
from test_pretrain import MODEL, args_for, data_dir  # noqa: F401 - data_dir is a fixture

KINDS = ("mha", "gqa", "mqa")


BIASES = {"none": {}, "all": dict(bias=True), "attention": dict(qkv_bias=True, proj_bias=True),
          "qkv": dict(qkv_bias=True)}  # plain, mlp_bias + attention_bias, Llama's attention_bias, Qwen2's


def base_model(kind, n_layer, seed=0, biases="none"):
    """A GPT at the init, its biases (which the init leaves at 0) drawn at random so that their growth shows."""
    torch.manual_seed(seed)
    model = GPT(small_config(kind, n_layer=n_layer, **BIASES[biases]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.1)
    return model


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(KINDS), base=st.integers(1, 4), data=st.data())
def test_stack_places_source_layer_map_j_at_j(kind, base, data):
    target = data.draw(st.integers(base, 9))  # growth never shrinks (test_grow_refuses_any_shrinking_...)
    index_map = data.draw(st.lists(st.integers(0, base - 1), min_size=target, max_size=target))
    src = base_model(kind, base)
    out = stack(src.config, src.state_dict(), small_config(kind, n_layer=target), index_map)
    sd = src.state_dict()
    for j, s in enumerate(index_map):
        for suffix in ("norm_1.weight", "attn.attn.weight", "attn.proj.weight", "norm_2.weight",
                       "mlp.swiglu.w1.weight", "mlp.swiglu.w2.weight", "mlp.swiglu.w3.weight"):
            assert torch.equal(out[f"transformer.h.{j}.{suffix}"], sd[f"transformer.h.{s}.{suffix}"])
    for key in ("transformer.wte.weight", "transformer.ln_f.weight", "lm_head.weight"):
        assert torch.equal(out[key], sd[key])
    out["transformer.h.0.attn.attn.weight"].add_(1.0)  # copies are independent tensors
    assert not torch.equal(out["transformer.h.0.attn.attn.weight"], sd[f"transformer.h.{index_map[0]}.attn.attn.weight"])


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(KINDS), base=st.integers(1, 3), g=st.integers(1, 4), order=st.sampled_from(["cyc", "int"]),
       biases=st.sampled_from(sorted(BIASES)))
def test_zero_depth_preserves_the_function(kind, base, g, order, biases):
    src = base_model(kind, base, biases=biases)
    index_map = [j % base for j in range(base * g)] if order == "cyc" else [j // g for j in range(base * g)]
    tgt_config = small_config(kind, n_layer=base * g, **BIASES[biases])
    grown = GPT(tgt_config)
    grown.load_state_dict(zero_depth(src.config, src.state_dict(), tgt_config, index_map))
    idx = torch.randint(0, 96, (2, 32))
    with torch.no_grad():
        assert (grown(idx) - src(idx)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_zero_depth_with_llama_pro_placement_is_exact(kind):
    """`--layers pro:K --op zero-depth` is LLaMA-Pro's expansion: identity blocks after every K layers."""
    from growth.layers import resolve

    src = base_model(kind, 4)
    tgt_config = small_config(kind, n_layer=6)
    grown = GPT(tgt_config)
    grown.load_state_dict(zero_depth(src.config, src.state_dict(), tgt_config, resolve("pro:2", 4, 6)))
    idx = torch.randint(0, 96, (2, 32))
    with torch.no_grad():
        assert (grown(idx) - src(idx)).abs().max().item() <= 1e-5
    for j in (2, 5):  # the new blocks: copies of layers 2 and 4 with zero output projections
        assert not grown.transformer.h[j].attn.proj.weight.any() and not grown.transformer.h[j].mlp.swiglu.w3.weight.any()


def test_stack_changes_the_function_and_zero_depth_rejects_bad_orders():
    src = base_model("gqa", 2)
    tgt = small_config("gqa", n_layer=4)
    grown = GPT(tgt)
    grown.load_state_dict(stack(src.config, src.state_dict(), tgt, [0, 1, 0, 1]))
    idx = torch.randint(0, 96, (1, 16))
    with torch.no_grad():
        assert (grown(idx) - src(idx)).abs().max().item() > 1e-3  # G_stack is not function preserving
    with pytest.raises(ValueError, match="source order"):
        zero_depth(src.config, src.state_dict(), tgt, [1, 0, 1, 0])


def test_noise_follows_the_init_distributions():
    src = base_model("mha", 2)
    tgt = small_config("mha", n_layer=2, n_embd=256, n_head=4, n_query_groups=4, intermediate_size=512)
    zeros = {k: torch.zeros_like(v) for k, v in GPT(tgt).state_dict().items()}
    noisy = add_noise(zeros, tgt, 1.0, torch.Generator().manual_seed(0))
    assert noisy["transformer.h.0.attn.attn.weight"].std().item() == pytest.approx((2 / 5 / 256) ** 0.5, rel=0.02)
    assert noisy["transformer.h.1.mlp.swiglu.w3.weight"].std().item() == pytest.approx(1 / 16 / 2, rel=0.02)
    assert torch.equal(noisy["transformer.ln_f.weight"], zeros["transformer.ln_f.weight"])
    sd = src.state_dict()
    assert add_noise(sd, src.config, 0.0, torch.Generator()) is sd
    mixed = add_noise(sd, src.config, 0.2, torch.Generator().manual_seed(1))
    eps = (mixed["lm_head.weight"] - 0.8 * sd["lm_head.weight"]) / 0.2
    assert eps.std().item() == pytest.approx((2 / 5 / 64) ** 0.5, rel=0.05)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        add_noise(sd, src.config, 1.5, torch.Generator())


def test_depth_operators_refuse_width_changes():
    src = base_model("gqa", 2)
    with pytest.raises(ValueError, match="n_embd 64 -> 128"):
        stack(src.config, src.state_dict(), small_config("gqa", n_layer=4, n_embd=128), [0, 1, 0, 1])


# ---- the command line ----

def save_base(directory, kind="gqa", n_layer=2, training=None):
    model = base_model(kind, n_layer)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / "lit_model.pth")
    model.config.to_json(directory / "lit_config.json")
    if training:
        (directory / "training.json").write_text(json.dumps(training))
    return model


def grow_cli(capsys, *args):
    from growth.__main__ import main

    code = main(["grow", *map(str, args)])
    return code, capsys.readouterr()


def test_grow_writes_weights_config_and_record(tmp_path, capsys):
    base = save_base(tmp_path / "base", training={"step": 10, "tokens": 5120, "flops": 1.25e9})
    target = tmp_path / "target.json"
    small_config("gqa", n_layer=6).to_json(target)
    code, out = grow_cli(capsys, "--src", tmp_path / "base", "--target", target, "--op", "zero-depth",
                         "--layers", "interleave", "--out", tmp_path / "grown")
    assert code == 0, out.err
    record = json.loads((tmp_path / "grown" / "growth.json").read_text())
    assert record["index_map"] == [0, 0, 0, 1, 1, 1]
    assert record["connection_rate"] == pytest.approx(1 / 5)
    assert (record["base_tokens"], record["base_flops"], record["operator"]) == (5120, 1.25e9, "zero-depth")
    assert len(record["source"]["sha256"]) == 64
    grown = GPT(small_config("gqa", n_layer=6))
    grown.load_state_dict(torch.load(tmp_path / "grown" / "lit_model.pth", weights_only=True))
    idx = torch.randint(0, 96, (1, 32))
    with torch.no_grad():
        assert (grown(idx) - base(idx)).abs().max().item() <= 1e-5


def assert_refused(code, out, *words):
    assert code == 1
    errors = [line for line in out.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.err
    for w in words:
        assert w in errors[0], errors[0]


def test_grow_bad_input_writes_nothing(tmp_path, capsys):
    save_base(tmp_path / "base")
    target = tmp_path / "target.json"
    small_config("gqa", n_layer=4).to_json(target)
    common = ("--src", tmp_path / "base", "--target", target, "--out", tmp_path / "o")
    assert_refused(*grow_cli(capsys, *common, "--op", "nope"), "unknown operator")
    assert_refused(*grow_cli(capsys, *common, "--op", "stack", "--layers", "123*2"), "2 layers")
    assert_refused(*grow_cli(capsys, *common, "--op", "stack", "--layers", "1234"), "4")
    small_config("gqa", n_layer=4, vocab_size=200).to_json(target)
    assert_refused(*grow_cli(capsys, *common, "--op", "stack"), "vocabulary")
    small_config("gqa", n_layer=4, n_embd=128).to_json(target)
    assert_refused(*grow_cli(capsys, *common, "--op", "stack"), "keep the width")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "lit_model.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "base" / "lit_config.json").rename(tmp_path / "corrupt" / "lit_config.json")
    small_config("gqa", n_layer=4).to_json(target)
    assert_refused(*grow_cli(capsys, "--src", tmp_path / "corrupt", "--target", target, "--out", tmp_path / "o",
                             "--op", "stack"), "lit_model.pth is not a torch checkpoint")
    assert not (tmp_path / "o").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep").write_text("x")
    assert_refused(*grow_cli(capsys, *common, "--op", "stack"), "--force")


@settings(max_examples=15, deadline=None)
@given(kind=st.sampled_from(KINDS), base=st.integers(1, 3), extra=st.integers(1, 4))
def test_random_depth_at_mask_zero_preserves_the_function(kind, base, extra):
    from growth.operators import random_depth

    src = base_model(kind, base)
    tgt = small_config(kind, n_layer=base + extra)
    grown = GPT(tgt)
    grown.load_state_dict(random_depth(src.config, src.state_dict(), tgt, torch.Generator().manual_seed(0)))
    grown.set_growth_mask(range(base, base + extra), 0.0)
    idx = torch.randint(0, 96, (2, 32))
    with torch.no_grad():
        assert (grown(idx) - src(idx)).abs().max().item() <= 1e-5
        grown.set_growth_mask(range(base, base + extra), 1.0)
        assert (grown(idx) - src(idx)).abs().max().item() > 1e-4
    assert "growth_mask" not in str(list(grown.state_dict()))  # checkpoints keep upstream's keys


def test_random_depth_layers_are_fresh_init():
    from growth.operators import random_depth

    tgt = small_config("mha", n_layer=3, n_embd=256, intermediate_size=512)
    src = GPT(small_config("mha", n_layer=1, n_embd=256, intermediate_size=512))
    out = random_depth(src.config, src.state_dict(), tgt, torch.Generator().manual_seed(0))
    assert torch.equal(out["transformer.h.0.attn.attn.weight"], src.state_dict()["transformer.h.0.attn.attn.weight"])
    assert out["transformer.h.2.attn.attn.weight"].std().item() == pytest.approx((2 / 5 / 256) ** 0.5, rel=0.03)
    assert out["transformer.h.2.attn.proj.weight"].std().item() == pytest.approx(1 / 16 / 3, rel=0.03)
    assert not torch.equal(out["transformer.h.1.attn.attn.weight"], out["transformer.h.2.attn.attn.weight"])


def tree(path):
    """Every file under `path` with its bytes: what a refused command must leave exactly as it was."""
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("op", OPERATORS)
@pytest.mark.parametrize("target, shrunk", [
    (dict(n_layer=2), "n_layer 4 -> 2"),
    (dict(n_layer=4, n_embd=32, n_head=2, n_query_groups=1, intermediate_size=80),
     "n_embd 64 -> 32, n_head 4 -> 2, n_query_groups 2 -> 1, intermediate_size 160 -> 80"),
])
def test_grow_refuses_any_shrinking_for_every_operator(tmp_path, capsys, op, target, shrunk):
    save_base(tmp_path / "base", n_layer=4)
    small_config("gqa", name="small", **target).to_json(tmp_path / "target.json")
    before = tree(tmp_path)
    code, out = grow_cli(capsys, "--src", tmp_path / "base", "--target", tmp_path / "target.json", "--op", op,
                         "--out", tmp_path / "grown")
    assert_refused(code, out, "cannot shrink", shrunk, "test-gqa: 4 layers, 64 wide, 4 heads",
                   f"small: {target['n_layer']} layers")
    assert out.err.count("\n") == 1 and tree(tmp_path) == before


def test_stack_refuses_a_shorter_map():  # the operators themselves, not only the command
    src = base_model("gqa", 4)
    with pytest.raises(ValueError, match="cannot shrink the model.*n_layer 4 -> 2"):
        stack(src.config, src.state_dict(), small_config("gqa", n_layer=2), [0, 1])


# ---- continuing from a grown model: the config beside --initial_checkpoint is the default ----

def fake_training_checkpoint(out_dir, step, config):
    """A training checkpoint intact enough for `find_resumable` and `model_config` (which read meta.json,
    lit_config.json and DCP's .metadata), holding one placeholder tensor instead of a model."""
    import torch.distributed.checkpoint as dcp

    path = out_dir / f"step-{step:08d}"
    dcp.save({"placeholder": torch.zeros(1)}, checkpoint_id=path, no_dist=True)
    (path / "meta.json").write_text(json.dumps({"step": step, "world_size": 1}))
    torch.save({}, path / "rng-rank0.pt")
    config.to_json(path / "lit_config.json")
    return path


def test_model_config_defaults_to_the_checkpoint_beside_or_resumed(tmp_path):
    from pretrain.parallel import model_config
    from pretrain.train_args import DEFAULT_MODEL, TrainArgs

    save_base(tmp_path / "grown", n_layer=4)
    args = TrainArgs(initial_checkpoint=str(tmp_path / "grown"), out_dir=str(tmp_path / "out"), resume="auto")
    assert model_config(args) == small_config("gqa", n_layer=4)
    assert args.model_name == str(tmp_path / "grown" / "lit_config.json")  # what the checkpoints' hparams record
    # a --model_name that agrees: another name and a longer context are fine, the weights' shapes are the same
    small_config("gqa", n_layer=4, name="renamed", block_size=64).to_json(tmp_path / "same.json")
    args = TrainArgs(model_name=str(tmp_path / "same.json"), initial_checkpoint=str(tmp_path / "grown"))
    assert model_config(args).block_size == 64

    resumed = fake_training_checkpoint(tmp_path / "out", 7, small_config("mqa", n_layer=3))
    fake_training_checkpoint(tmp_path / "out", 3, small_config("mha"))
    assert model_config(TrainArgs(out_dir=str(tmp_path / "out"), resume="auto")) == small_config("mqa", n_layer=3)
    assert model_config(TrainArgs(resume=str(resumed))) == small_config("mqa", n_layer=3)
    args = TrainArgs(out_dir=str(tmp_path / "empty"), resume="auto")
    assert model_config(args) == Config.from_name(DEFAULT_MODEL) and args.model_name == DEFAULT_MODEL


@pytest.mark.parametrize("case, words", [
    ("disagrees", ["--model_name", "disagrees with", "grown/lit_config.json", "n_layer 2 vs 4",
                   "drop --model_name"]),
    ("no config", ["--initial_checkpoint", "no lit_config.json beside", "pass --model_name"]),
    ("missing", ["--initial_checkpoint", "nowhere", "not found"]),
])
def test_model_config_refusals(tmp_path, case, words):
    from pretrain.parallel import model_config
    from pretrain.train_args import TrainArgs, UsageError

    save_base(tmp_path / "grown", n_layer=4)
    small_config("gqa", n_layer=2).to_json(tmp_path / "two.json")
    args = {"disagrees": TrainArgs(model_name=str(tmp_path / "two.json"), initial_checkpoint=str(tmp_path / "grown")),
            "no config": TrainArgs(initial_checkpoint=str(tmp_path / "grown" / "lit_model.pth")),
            "missing": TrainArgs(initial_checkpoint=str(tmp_path / "nowhere" / "lit_model.pth"))}[case]
    if case == "no config":
        (tmp_path / "grown" / "lit_config.json").unlink()
    with pytest.raises(UsageError) as refused:
        model_config(args)
    assert "\n" not in str(refused.value) and all(w in str(refused.value) for w in words), str(refused.value)


def test_training_a_grown_model_needs_no_model_name(tmp_path, capsys, data_dir):  # noqa: F811
    """The documented flow: grow, then train from the grown checkpoint without repeating its config."""
    base = tmp_path / "base"
    base.mkdir()
    torch.manual_seed(0)
    model = GPT(Config(**{**MODEL, "n_layer": 1}))
    torch.save(model.state_dict(), base / "lit_model.pth")
    model.config.to_json(base / "lit_config.json")
    Config(**{**MODEL, "n_layer": 3}).to_json(tmp_path / "target.json")
    code, out = grow_cli(capsys, "--src", base, "--target", tmp_path / "target.json", "--op", "stack",
                         "--out", tmp_path / "grown")
    assert code == 0, out.err
    flags = args_for(data_dir, tmp_path / "run", "--max_steps", 1, "--eval_interval", 0,
                     "--initial_checkpoint", tmp_path / "grown")
    flags = flags[2:]  # no --model_name
    assert flags[0] == "--train_data_dir"
    result = subprocess.run([sys.executable, str(ROOT / "pretrain" / "tinyllama.py"), *flags], capture_output=True,
                            text=True, cwd=ROOT, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert Config.from_json(tmp_path / "run" / "final" / "lit_config.json").n_layer == 3
    assert "tiny-train | single" in result.stdout

    from pretrain.tinyllama import run

    other = tmp_path / "other.json"
    Config(**{**MODEL, "n_layer": 2}).to_json(other)
    before = tree(tmp_path)
    assert run([*flags, "--model_name", str(other), "--out_dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --model_name") and err.count("\n") == 1 and "n_layer 2 vs 3" in err, err
    assert tree(tmp_path) == before and not (tmp_path / "o").exists()
