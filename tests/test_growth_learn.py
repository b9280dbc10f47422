"""G_learn (LiGO-style): learn-depth starts as G_stack; learn-width starts with the source block and whole heads and
follows §3.3's formulas; only the operator's matrices train; a short fit lowers the loss; `python -m growth learn`."""

import json

import pytest
import torch
from conftest import small_config
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from test_growth_depth import assert_refused, save_base
from test_pretrain import data_dir  # noqa: F401 - the packed-data fixture (vocabulary 64, blocks of 33 tokens)

from growth.learn import LearnDepth, LearnWidth, fit, learn_depth, learn_width
from growth.operators import stack
from lit_gpt import GPT, Config
from lit_gpt.model import fuse_qkv, split_qkv

KINDS = ("mha", "gqa", "mqa")
OPERATOR_MATRICES = {"learn-depth": {f"mix.{n}" for n in ("norm_1", "q", "k", "v", "proj", "norm_2", "w1", "w2", "w3")},
                     "learn-width": {"B_emb", "B_Q", "B_K", "B_V", "B_mlp"}}


def config(groups, q_per_kv, head_size, ffn, bias=False, n_layer=2):
    return Config(name="w", block_size=32, vocab_size=96, padding_multiple=32, n_layer=n_layer, bias=bias,
                  n_head=groups * q_per_kv, n_query_groups=groups, n_embd=groups * q_per_kv * head_size,
                  intermediate_size=ffn)


def source_state(cfg, seed=0):
    """GPT init, with norm weights and biases moved off 1 and 0 so that their rules are exercised."""
    torch.manual_seed(seed)
    state = GPT(cfg).state_dict()
    for t in state.values():
        if t.ndim == 1:
            t.uniform_(0.5, 1.5)
    return state


@st.composite
def width_growth(draw):
    """(source, target) over MHA (q_per_kv 1), GQA and MQA (1 source group), with or without biases."""
    hs, q, g, ffn = draw(st.sampled_from([4, 8])), draw(st.sampled_from([1, 2, 4])), draw(st.integers(1, 2)), \
        draw(st.integers(4, 24))
    bias = draw(st.booleans())
    return config(g, q, hs, ffn, bias), config(g + draw(st.integers(0, 3)), q, hs, ffn + draw(st.integers(0, 16)), bias)


def old_block(tensor, shape):
    return tensor[tuple(slice(0, n) for n in shape)]


# ---- learn-depth ----

@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(KINDS), base=st.integers(1, 4), bias=st.booleans(), data=st.data())
def test_learn_depth_at_init_is_stack_exactly(kind, base, bias, data):
    target = data.draw(st.integers(base, 8))
    index_map = data.draw(st.lists(st.integers(0, base - 1), min_size=target, max_size=target))
    src, tgt = small_config(kind, n_layer=base, bias=bias), small_config(kind, n_layer=target, bias=bias)
    state = source_state(src)
    grown, stacked = learn_depth(src, state, tgt, index_map), stack(src, state, tgt, index_map)
    assert sorted(grown) == sorted(stacked)
    for key in stacked:
        assert torch.equal(grown[key], stacked[key]), key


def test_learn_depth_mixes_q_k_v_separately_and_refuses_width_changes():
    src, tgt = small_config("gqa", n_layer=2), small_config("gqa", n_layer=3)
    state = source_state(src)
    hyper = LearnDepth(src, state, tgt, [0, 1, 0])
    with torch.no_grad():
        hyper.mix["k"][2] = torch.tensor([0.25, 0.75])
    out = hyper.materialize()
    layers = [split_qkv(state[f"transformer.h.{i}.attn.attn.weight"], src) for i in range(2)]
    q, k, v = split_qkv(out["transformer.h.2.attn.attn.weight"], tgt)
    assert torch.equal(q, layers[0][0]) and torch.equal(v, layers[0][2])
    assert torch.allclose(k, 0.25 * layers[0][1] + 0.75 * layers[1][1])
    with pytest.raises(ValueError, match="n_embd 64 -> 128"):
        LearnDepth(src, state, small_config("gqa", n_layer=4, n_embd=128), [0, 1, 0, 1])


# ---- learn-width ----

@settings(max_examples=20, deadline=None)
@given(pair=width_growth())
def test_learn_width_at_init_keeps_the_source_block_and_builds_new_heads_from_whole_heads(pair):
    src, tgt = pair
    state = source_state(src)
    hyper = LearnWidth(src, state, tgt, torch.Generator().manual_seed(0))
    out = learn_width(src, state, tgt, torch.Generator().manual_seed(0))
    assert all(torch.equal(out[k], v) for k, v in hyper.export().items())  # the pure form is the module's init
    for key, tensor in state.items():
        if "attn.attn" in key:  # q, k, v apart: the first heads (and groups) are the source's
            assert all(torch.equal(old_block(g, s.shape), s) for g, s in zip(split_qkv(out[key], tgt),
                                                                            split_qkv(tensor, src))), key
        else:
            assert torch.equal(old_block(out[key], tensor.shape), tensor), key
    for i in range(src.n_layer):  # every target query head, on the old hidden dims: sum_s B_Q[i, s] (source head s)
        key = f"transformer.h.{i}.attn.attn.weight"
        heads = split_qkv(state[key], src)[0].reshape(src.n_head, src.head_size, src.n_embd)
        grown = split_qkv(out[key], tgt)[0].reshape(tgt.n_head, tgt.head_size, tgt.n_embd)
        expected = torch.einsum("is,std->itd", hyper.B_Q.detach(), heads)
        assert torch.allclose(grown[:, :, :src.n_embd], expected, atol=1e-6)
    assert torch.equal(hyper.B_emb.detach()[:src.n_embd], torch.eye(src.n_embd))
    new_rows = hyper.B_emb.detach()[src.n_embd:]
    if new_rows.numel() > 50:
        assert new_rows.std().item() == pytest.approx(tgt.n_embd ** -0.5, rel=0.3)


@settings(max_examples=10, deadline=None)
@given(pair=width_growth())
def test_learn_width_follows_the_formulas_with_dense_head_level_operators(pair):
    """Random (trained-looking) matrices: every tensor matches §3.3 with B_Q ⊗ I_hs, B_K ⊗ I_hs, B_V ⊗ I_hs on the
    separated q, k, v and B_O = B_V ⊗ I_q ⊗ I_hs on attn.proj's fan-in."""
    src, tgt = pair
    state = source_state(src)
    hyper = LearnWidth(src, state, tgt, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in hyper.parameters():
            p.normal_()
    out, hs, qpk = hyper.materialize(), src.head_size, src.q_per_kv
    eye = torch.eye(hs)
    e, m = hyper.B_emb.detach(), hyper.B_mlp.detach()
    bq, bk, bv = (torch.kron(b.detach(), eye) for b in (hyper.B_Q, hyper.B_K, hyper.B_V))
    bo = torch.kron(torch.kron(hyper.B_V.detach(), torch.eye(qpk)), eye)
    rules = {"transformer.wte.weight": (None, e), "lm_head.weight": (None, e), "transformer.ln_f.weight": (e, None),
             "norm_1.weight": (e, None), "norm_2.weight": (e, None), "attn.proj.weight": (e, bo),
             "attn.proj.bias": (e, None), "mlp.swiglu.w1.weight": (m, e), "mlp.swiglu.w2.weight": (m, e),
             "mlp.swiglu.w3.weight": (e, m), "mlp.swiglu.w1.bias": (m, None), "mlp.swiglu.w2.bias": (m, None),
             "mlp.swiglu.w3.bias": (e, None)}
    for key, w in state.items():
        name = key.split(".", 3)[-1] if key.startswith("transformer.h.") else key
        if name.startswith("attn.attn"):
            q, k, v = split_qkv(w, src)
            fused = fuse_qkv(bq @ q, bk @ k, bv @ v, tgt)
            expected = fused @ e.T if w.ndim == 2 else fused
        else:
            left, right = rules[name]
            expected = w if left is None else left @ w
            expected = expected if right is None else expected @ right.T
        assert torch.allclose(out[key], expected, atol=1e-4, rtol=1e-4), key


@pytest.mark.parametrize("kind", KINDS)
def test_learn_width_moves_whole_heads_and_groups(kind):
    """With selection matrices (one-hot rows, like the init's identity part) a target group's fused rows
    [q heads | k | v] on the old hidden dims are exactly one source group's: heads never mix q/k/v or rows of
    different heads (the official code's "three thirds" split would)."""
    src = small_config(kind)
    groups = src.n_query_groups
    tgt = small_config(kind, n_embd=128, n_head=8, n_query_groups=2 * groups, intermediate_size=320)
    state = source_state(src)
    hyper = LearnWidth(src, state, tgt, torch.Generator().manual_seed(0))
    pick = [(g + 1) % groups for g in range(2 * groups)]  # target group g' <- source group pick[g']
    with torch.no_grad():
        for b in (hyper.B_K, hyper.B_V):
            b.copy_(torch.eye(groups)[pick])
        hyper.B_Q.copy_(torch.eye(src.n_head)[[pick[h // src.q_per_kv] * src.q_per_kv + h % src.q_per_kv
                                                for h in range(tgt.n_head)]])
    out = hyper.materialize()
    block = (src.q_per_kv + 2) * src.head_size
    for i in range(src.n_layer):
        grown, source = out[f"transformer.h.{i}.attn.attn.weight"], state[f"transformer.h.{i}.attn.attn.weight"]
        for g, s in enumerate(pick):
            assert torch.equal(grown[g * block:(g + 1) * block, :src.n_embd], source[s * block:(s + 1) * block])


def test_learn_width_refuses_other_head_sizes_and_shrinking():
    src = small_config("gqa")
    state = source_state(src)
    with pytest.raises(ValueError, match="head_size"):
        LearnWidth(src, state, small_config("gqa", n_embd=128), torch.Generator())
    with pytest.raises(ValueError, match="shrink"):
        LearnWidth(src, state, small_config("gqa", n_embd=32, n_head=2, n_query_groups=1, intermediate_size=80),
                   torch.Generator())


# ---- fitting ----

@pytest.fixture(scope="module")
def trained_base(data_dir):  # noqa: F811
    """A GQA base trained for 40 steps on the fixture's data: G_learn starts from a trained model."""
    from growth.learn import _stream, train_files

    torch.manual_seed(0)
    model = GPT(small_config("gqa"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches = _stream(train_files(data_dir), 33, 8, seed=0, shuffle=True)
    for _ in range(40):
        batch = next(batches)
        loss = torch.nn.functional.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.config, {k: v.detach().clone() for k, v in model.state_dict().items()}


def hypernet(op, kind="gqa", base=None):
    src, state = base or (small_config(kind), None)
    state = state if state is not None else source_state(src)
    family = dict(tie_embeddings=src.tie_embeddings, qkv_bias=src.qkv_bias)
    if op == "learn-depth":
        tgt = small_config(kind, n_layer=4, **family)
        return LearnDepth(src, state, tgt, [0, 1, 0, 1]), tgt
    tgt = small_config(kind, n_embd=128, n_head=8, n_query_groups=2 * src.n_query_groups, intermediate_size=320,
                       **family)
    return LearnWidth(src, state, tgt, torch.Generator().manual_seed(0)), tgt


@pytest.mark.parametrize("op", sorted(OPERATOR_MATRICES))
def test_gradients_reach_only_the_operator_matrices(op):
    hyper, tgt = hypernet(op)
    assert {n for n, _ in hyper.named_parameters()} == OPERATOR_MATRICES[op] == set(hyper.state_dict())
    assert not any(b.requires_grad for b in hyper.buffers())
    model = GPT(tgt).requires_grad_(False)
    idx = torch.randint(0, 96, (2, 17))
    logits = torch.func.functional_call(model, hyper.materialize(), (idx[:, :-1],))
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
    for name, p in hyper.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("op", sorted(OPERATOR_MATRICES))
def test_a_short_fit_lowers_the_loss_and_is_deterministic(op, data_dir, trained_base):  # noqa: F811
    runs = []
    for _ in range(2):
        hyper, tgt = hypernet(op, base=trained_base)
        sources = {n: b.clone() for n, b in hyper.named_buffers()}
        result = fit(hyper, tgt, data_dir, steps=6, micro_batch_size=4, seed=1, progress=False)  # default lr
        assert all(torch.equal(b, sources[n]) for n, b in hyper.named_buffers())  # the source stays frozen
        runs.append((result, {k: v.clone() for k, v in hyper.state_dict().items()}))
    (first, params), (second, params_again) = runs
    assert first["loss_after"] < first["loss_before"], first  # on a fixed validation batch, not trained on
    assert first == second and all(torch.equal(params[k], params_again[k]) for k in params)
    assert first["tokens"] == 6 * 4 * 32


# ---- the command line ----

def learn_cli(capsys, *args):
    from growth.__main__ import main

    code = main(["learn", *map(str, args)])
    return code, capsys.readouterr()


def test_learn_depth_command_writes_a_loadable_model_and_record(tmp_path, capsys, data_dir):  # noqa: F811
    save_base(tmp_path / "base", training={"step": 10, "tokens": 5120, "flops": 1.25e9})
    tgt = small_config("gqa", n_layer=4)
    tgt.to_json(tmp_path / "target.json")
    common = ("--src", tmp_path / "base", "--target", tmp_path / "target.json", "--op", "learn-depth",
              "--data", data_dir, "--layers", "interleave", "--micro_batch_size", 2)
    code, out = learn_cli(capsys, *common, "--steps", 3, "--lr", 0.01, "--out", tmp_path / "grown")
    assert code == 0, out.err
    assert "learned test-gqa -> test-gqa with learn-depth in 3 steps" in out.out
    grown = tmp_path / "grown"
    assert {p.name for p in grown.iterdir()} == {"lit_model.pth", "lit_config.json", "growth.json", "hypernet.pth"}
    GPT(tgt).load_state_dict(torch.load(grown / "lit_model.pth", weights_only=True), strict=True)
    record = json.loads((grown / "growth.json").read_text())
    assert record["index_map"] == [0, 0, 1, 1] and record["connection_rate"] == pytest.approx(1 / 3)
    assert (record["operator"], record["base_tokens"]) == ("learn-depth", 5120)
    assert record["fit_tokens"] == 3 * 2 * tgt.block_size and record["fit_flops"] > 0
    assert record["base_flops"] == pytest.approx(1.25e9 + record["fit_flops"])  # the fit's compute counts
    assert record["options"]["steps"] == 3 and record["options"]["lr"] == 0.01 and len(record["source"]["sha256"]) == 64
    assert record["loss_before"] > 0 and record["loss_after"] > 0
    assert set(torch.load(grown / "hypernet.pth", weights_only=True)) == OPERATOR_MATRICES["learn-depth"]
    code, out = learn_cli(capsys, *common, "--steps", 0, "--out", tmp_path / "init", "--safetensors")
    assert code == 0, out.err
    init = load_file(str(tmp_path / "init" / "lit_model.safetensors"))
    base = torch.load(tmp_path / "base" / "lit_model.pth", weights_only=True)
    stacked = stack(Config.from_json(tmp_path / "base" / "lit_config.json"), base, tgt, [0, 0, 1, 1])
    assert all(torch.equal(init[k], stacked[k]) for k in stacked)


def test_learn_width_command_writes_a_loadable_model(tmp_path, capsys, data_dir):  # noqa: F811
    save_base(tmp_path / "base")
    tgt = small_config("gqa", n_embd=128, n_head=8, n_query_groups=4, intermediate_size=320)
    tgt.to_json(tmp_path / "target.json")
    code, out = learn_cli(capsys, "--src", tmp_path / "base", "--target", tmp_path / "target.json", "--op",
                          "learn-width", "--data", data_dir, "--steps", 2, "--out", tmp_path / "grown", "--safetensors")
    assert code == 0, out.err
    GPT(tgt).load_state_dict(load_file(str(tmp_path / "grown" / "lit_model.safetensors")), strict=True)
    record = json.loads((tmp_path / "grown" / "growth.json").read_text())
    assert record["index_map"] is None and record["connection_rate"] is None and record["operator"] == "learn-width"
    assert set(torch.load(tmp_path / "grown" / "hypernet.pth", weights_only=True)) == OPERATOR_MATRICES["learn-width"]


def test_learn_bad_input_writes_nothing(tmp_path, capsys, data_dir):  # noqa: F811
    save_base(tmp_path / "base")
    target = tmp_path / "target.json"
    (tmp_path / "empty").mkdir()
    common = ("--src", tmp_path / "base", "--target", target, "--out", tmp_path / "o")
    depth = (*common, "--op", "learn-depth", "--data", data_dir)
    width = (*common, "--op", "learn-width", "--data", data_dir)
    small_config("gqa", n_layer=4).to_json(target)
    assert_refused(*learn_cli(capsys, *common, "--op", "learn-depth", "--data", tmp_path / "empty"), "train_*.bin")
    assert_refused(*learn_cli(capsys, *depth, "--steps", -1), "--steps")
    assert_refused(*learn_cli(capsys, *common, "--op", "stack", "--data", data_dir), "unknown operator")
    assert_refused(*learn_cli(capsys, *width, "--layers", "cyclic"), "keeps the depth")
    assert_refused(*learn_cli(capsys, *depth, "--layers", "12"), "the target has 4")
    small_config("gqa", n_layer=4, n_embd=128, n_head=8, n_query_groups=4).to_json(target)
    assert_refused(*learn_cli(capsys, *depth), "keep the width")
    small_config("gqa", n_layer=4, vocab_size=200).to_json(target)
    assert_refused(*learn_cli(capsys, *depth), "vocabulary")
    small_config("gqa", n_embd=32, n_head=2, n_query_groups=1, intermediate_size=80).to_json(target)
    assert_refused(*learn_cli(capsys, *width), "shrink")
    small_config("gqa", n_embd=128).to_json(target)
    assert_refused(*learn_cli(capsys, *width), "head_size")
    assert not (tmp_path / "o").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep").write_text("x")
    small_config("gqa", n_layer=4).to_json(target)
    assert_refused(*learn_cli(capsys, *depth), "--force")
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["keep"]


@pytest.mark.parametrize("op", sorted(OPERATOR_MATRICES))
def test_a_tied_target_gets_one_tensor_for_embedding_and_head(op):
    """SmolLM2-style tied embeddings: the materialised head is the embedding itself, so the tied model takes it in
    `functional_call` and the gradient reaches the operator through both uses."""
    src = small_config("gqa", tie_embeddings=True, qkv_bias=True)
    hyper, tgt = hypernet(op, base=(src, None))
    assert tgt.tie_embeddings
    state = hyper.materialize()
    assert state["lm_head.weight"] is state["transformer.wte.weight"]
    model = GPT(tgt).requires_grad_(False)
    idx = torch.randint(0, 96, (2, 17))
    logits = torch.func.functional_call(model, state, (idx[:, :-1],))
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
    assert all(p.grad is not None for p in hyper.parameters())
