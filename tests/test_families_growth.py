"""Growing Llama-family checkpoints end to end (issue 13, item 2): HF directory -> convert_hf_checkpoint ->
growth grow -> convert_lit_checkpoint -> transformers, for tied embeddings (SmolLM2, Llama-3.2), Llama 3 RoPE,
q/k/v biases (Qwen2) and attention_bias with a head_dim apart from hidden / heads. Function-preserving operators
give the source HF model's logits back (1e-4); G_stack, trained a few steps and exported, loads in transformers."""

import json

import pytest
import torch
import transformers
from conftest import in_one_process
from test_families import FAMILIES, HF_TO_LIT, LIT_TO_HF, hf_family_model, logits, run
from test_pretrain import args_for, data_dir  # noqa: F401 - data_dir is a fixture

from growth.__main__ import main as growth_main
from lit_gpt import GPT, Config

GROWN_FAMILIES = ("smollm2", "llama3.2", "qwen2", "head_dim")
IDX = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(1))
MEASURED = {}  # (family, operator) -> max |logit diff| against the source HF model, printed with -s


def hf_source(tmp_path, family):
    """The random tiny HF model of `family`, saved and converted: (model, its lit Config)."""
    hf = hf_family_model(family)
    hf.save_pretrained(tmp_path / "hf")
    code, err = run(HF_TO_LIT, "--checkpoint_dir", tmp_path / "hf")
    assert code == 0, err
    return hf, Config.from_json(tmp_path / "hf" / "lit_config.json")


def target_json(path, config, **changes):
    fields = {**config.json_fields(), "name": f"{config.name}-grown", **changes}
    Config(**fields).to_json(path)
    return path


def to_hf(lit_dir, out_dir):
    code, err = run(LIT_TO_HF, "--checkpoint_path", lit_dir / "lit_model.pth", "--out_dir", out_dir)
    assert code == 0, err
    return transformers.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()


def width_changes(config, k=2):
    return dict(n_embd=config.n_embd * k, n_head=config.n_head * k, n_query_groups=config.n_query_groups * k,
                intermediate_size=config.intermediate_size * k,
                **({"head_dim": config.head_dim} if config.head_dim else {}))


@pytest.mark.parametrize("family", GROWN_FAMILIES)
@pytest.mark.parametrize("op", ["zero-depth", "hyperclone", "zero-width"])
def test_function_preserving_growth_gives_the_hf_models_logits_back(tmp_path, family, op):
    hf, config = hf_source(tmp_path, family)
    changes = dict(n_layer=config.n_layer * 2) if op == "zero-depth" else width_changes(config)
    target = target_json(tmp_path / "target.json", config, **changes)
    code = growth_main(["grow", "--src", str(tmp_path / "hf"), "--target", str(target), "--op", op,
                        "--out", str(tmp_path / "grown")])
    assert code == 0
    family_record = json.loads((tmp_path / "grown" / "growth.json").read_text())["family"]
    assert family_record["tie_embeddings"] is config.tie_embeddings
    assert family_record["hf_architecture"] == ("Qwen2ForCausalLM" if family == "qwen2" else "LlamaForCausalLM")
    assert family_record["rope"] == ("llama3" if family == "llama3.2" else "default")
    state = torch.load(tmp_path / "grown" / "lit_model.pth", weights_only=True)
    if config.tie_embeddings:  # still one tensor
        assert state["lm_head.weight"].untyped_storage().data_ptr() == \
            state["transformer.wte.weight"].untyped_storage().data_ptr()
    back = to_hf(tmp_path / "grown", tmp_path / "back")
    assert type(back) is type(hf)
    assert back.config.num_hidden_layers == changes.get("n_layer", config.n_layer)
    assert back.config.hidden_size == changes.get("n_embd", config.n_embd)
    assert back.config.tie_word_embeddings is config.tie_embeddings
    expected = logits(hf, IDX)
    diff = (logits(back, IDX) - expected).abs().max().item()
    MEASURED[family, op] = diff
    print(f"{family} {op}: max |logit diff| vs the source HF model = {diff:.2e}")
    assert diff <= 1e-4


def test_stacked_families_train_export_and_load_in_transformers(tmp_path, data_dir):  # noqa: F811
    """G_stack on each family, 3 AdamW steps on counting data (ids < 64 of the 256-token vocabularies), the
    run's final/ export converted back: transformers builds the family's class, ties kept, logits equal ours."""
    commands, sources = [], {}
    for family in GROWN_FAMILIES:
        work = tmp_path / family
        work.mkdir()
        sources[family] = hf_source(work, family)
        target = target_json(work / "target.json", sources[family][1], n_layer=4)
        commands += [["growth", "grow", "--src", work / "hf", "--target", target, "--op", "stack",
                      "--out", work / "grown"],
                     ["pretrain/tinyllama.py", *args_for(data_dir, work / "run", "--model_name", target,
                                                         "--initial_checkpoint", work / "grown", "--block_size", 32,
                                                         "--max_steps", 3, "--eval_interval", 0, "--save_interval", 0)]]
    in_one_process(commands, tmp_path)
    for family, (hf, config) in sources.items():
        work = tmp_path / family
        grown = torch.load(work / "grown" / "lit_model.pth", weights_only=True)
        trained = torch.load(work / "run" / "final" / "lit_model.pth", weights_only=True)
        assert not torch.equal(grown["transformer.h.3.attn.attn.weight"], trained["transformer.h.3.attn.attn.weight"])
        back = to_hf(work / "run" / "final", work / "back")
        assert type(back) is type(hf) and back.config.num_hidden_layers == 4
        assert back.config.tie_word_embeddings is config.tie_embeddings
        if config.tie_embeddings:
            assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()
        lit = GPT(Config.from_json(work / "run" / "final" / "lit_config.json")).eval()
        lit.load_state_dict(trained)
        diff = (logits(back, IDX) - logits(lit, IDX)).abs().max().item()
        assert diff <= 1e-4, (family, diff)
    assert set(FAMILIES) >= set(GROWN_FAMILIES)
