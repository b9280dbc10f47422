"""Weights for meta-device models: upstream's init drawn per parameter, checkpoints loaded shard by shard, and the
checks that run before any process starts (slurm layout)."""

import pytest
import torch
from conftest import small_config

from lit_gpt import GPT
from lit_gpt.distributed import check_slurm_layout
from lit_gpt.materialize import init_parameters, load_parameters, open_weights, parameter_inits


def meta_model(config):
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    return model


def test_init_follows_upstreams_distribution():
    """Same kinds and standard deviations as GPT.reset_parameters (GPT-NeoX small init, depth-scaled proj/w3,
    norms one), which draws from the global RNG in module order instead."""
    config = small_config("gqa", n_layer=4, n_embd=128, intermediate_size=352)
    torch.manual_seed(0)
    reference = GPT(config).state_dict()
    model = meta_model(config)
    init_parameters(model, 3407)
    inits = parameter_inits(model)
    assert set(inits) == set(reference)
    assert inits["transformer.h.0.attn.proj.weight"] == ("normal", pytest.approx(1 / 128 ** 0.5 / 4))
    assert inits["transformer.h.0.mlp.swiglu.w1.weight"] == ("normal", pytest.approx((2 / 5 / 128) ** 0.5))
    for name, value in model.state_dict().items():
        if name.startswith("rope_"):
            continue
        ref = reference[name]
        if inits[name][0] == "ones":
            assert torch.equal(value, torch.ones_like(value)) and torch.equal(ref, torch.ones_like(ref))
        else:
            assert value.mean().abs() < 0.01
            assert value.std().item() == pytest.approx(ref.std().item(), rel=0.05), name
            assert value.std().item() == pytest.approx(inits[name][1], rel=0.05), name


def test_init_is_deterministic_per_seed_and_parameter():
    config = small_config("mha")
    a, b, c = meta_model(config), meta_model(config), meta_model(config)
    init_parameters(a, 1)
    init_parameters(b, 1)
    init_parameters(c, 2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    w = "transformer.h.{}.attn.attn.weight"
    assert not torch.equal(sa[w.format(0)], sc[w.format(0)])  # another seed
    assert not torch.equal(sa[w.format(0)], sa[w.format(1)])  # another parameter of the same shape


def test_rope_cache_is_rebuilt_after_to_empty():
    config = small_config("gqa")
    model = meta_model(config)
    init_parameters(model, 0)
    model.reset_rope_cache()
    assert torch.equal(model.rope_cos, GPT(config).rope_cos) and torch.equal(model.rope_sin, GPT(config).rope_sin)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_parameters_from_a_weights_file(tmp_path, suffix):
    config = small_config("gqa")
    source = GPT(config).state_dict()
    path = tmp_path / f"lit_model{suffix}"
    if suffix == ".pth":
        torch.save(source, path)
    else:
        from safetensors.torch import save_file

        save_file(source, str(path))
    weights = open_weights(path)
    assert weights["lm_head.weight"].shape == source["lm_head.weight"].shape  # known before any tensor is read
    model = meta_model(config)
    load_parameters(model, weights)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.items())


@pytest.mark.parametrize("env,devices,nodes,words", [
    ({"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "8", "SLURM_NNODES": "1"}, 1, 1,
     ["8 task(s) per node", "--devices is 1"]),
    ({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "2"}, 4, 1, ["2 task(s)", "--devices is 4"]),
    ({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "2"}, 2, 1, ["2 node(s)", "--num_nodes is 1"]),
])
def test_slurm_layout_must_match_devices_and_nodes(monkeypatch, env, devices, nodes, words):
    for key, value in {"SLURM_JOB_NAME": "train", **env}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError) as e:
        check_slurm_layout(devices, nodes)
    assert all(w in str(e.value) for w in words), str(e.value)
    check_slurm_layout(int(env["SLURM_NTASKS_PER_NODE"]), int(env["SLURM_NNODES"]))
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # Lightning's escape hatch: not a slurm launch
    check_slurm_layout(devices, nodes)


def test_a_job_named_interactive_with_several_tasks_is_refused(monkeypatch):
    """Lightning ignores slurm for jobs named 'interactive' or 'bash' (salloc shells); under srun with several
    tasks each task would then start a run of its own on the same out_dir."""
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ValueError, match="runs 2 tasks.*rename the job"):
        check_slurm_layout(2, 1)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # srun --pty bash in an allocation: our launcher starts ranks
    check_slurm_layout(2, 1)
