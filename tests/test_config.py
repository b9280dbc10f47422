import json

import pytest
import torch

from lit_gpt import GPT, Config
from lit_gpt.config import name_to_config, param_count
from lit_gpt.utils import num_parameters

# totals checked against reference/tinyllama-upstream.md §3.2 and reference/stacking-paper.md §5.1
PARAMETER_COUNTS = {
    "tiny_LLaMA_1b": 1_100_048_384,
    "24L2048H": 1_364_297_728,
    "6L2048H": 439_379_968,
    "24L1024H": 373_867_520,
    "tiny_LLaMA_3B": 2_397_473_280,
    "tiny_LLaMA_7B": 5_933_109_248,
    "32L4096H": 6_738_415_616,
    "tiny_LLaMA_1.1B": 1_213_302_784,
    # public models (reference families-and-schedules.md §1): their released checkpoints' totals, the tied
    # embedding counted once (transformers' num_parameters; tests/test_families.py builds them from our configs)
    "SmolLM2-135M": 134_515_008,
    "SmolLM2-360M": 361_821_120,
    "Llama-3.2-1B": 1_235_814_400,
    "Qwen2.5-0.5B": 494_032_768,
}

PAPER_NAMES = ["24L2048H", "12L2048H", "6L2048H", "3L2048H", "1L2048H", "24L1024H", "6L1024H", "tiny_LLaMA_410M",
               "tiny_LLaMA_3B", "tiny_LLaMA_750M_like3B", "tiny_LLaMA_375M_like3B", "tiny_LLaMA_190M_like3B",
               "tiny_LLaMA_80M_like3B", "tiny_LLaMA_7B", "tiny_LLaMA_1.7B_like7B", "32L4096H", "23L4096H", "8L4096H",
               "tiny_LLaMA_1.1B", "tiny_LLaMA_400M_like1.1B", "tiny_LLaMA_1b", "tiny_LLaMA_120M"]


@pytest.mark.parametrize("name", sorted(PARAMETER_COUNTS))
def test_parameter_counts(name):
    with torch.device("meta"):
        assert num_parameters(GPT(Config.from_name(name))) == PARAMETER_COUNTS[name]
    assert param_count(Config.from_name(name)) == PARAMETER_COUNTS[name]


def test_tinyllama_1b_fields():
    c = Config.from_name("tiny_LLaMA_1b")
    assert (c.n_layer, c.n_head, c.n_embd, c.n_query_groups, c.intermediate_size) == (22, 32, 2048, 4, 5632)
    assert (c.head_size, c.q_per_kv, c.padded_vocab_size, c.block_size) == (64, 8, 32000, 2048)


def test_paper_names_registered():
    missing = [n for n in PAPER_NAMES if n not in name_to_config]
    assert missing == []


def test_growth_factor_four_in_non_embedding_parameters():
    def non_embedding(name):  # the blocks: the paper's g counts these
        c = Config.from_name(name)
        with torch.device("meta"):
            return num_parameters(GPT(c).transformer.h)
    assert non_embedding("24L2048H") == 4 * non_embedding("6L2048H")
    # the width base matches the depth base up to its extra norm weights (24,576 of 308M)
    assert non_embedding("24L1024H") - non_embedding("6L2048H") == 24 * 2 * 1024 - 6 * 2 * 2048
    assert non_embedding("tiny_LLaMA_3B") == 4 * non_embedding("tiny_LLaMA_750M_like3B")


def test_json_round_trip(tmp_path):
    c = Config.from_name("tiny_LLaMA_3B", block_size=512)
    c.to_json(tmp_path / "lit_config.json")
    assert Config(**json.load(open(tmp_path / "lit_config.json"))) == c
    assert Config.load(tmp_path) == c


def test_from_json_refuses_unknown_keys(tmp_path):  # more in test_config_strict.py
    data = {**name_to_config["tiny_LLaMA_120M"], "some_future_field": 3}
    (tmp_path / "lit_config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown key 'some_future_field'"):
        Config.from_json(tmp_path / "lit_config.json")


def test_unknown_name_and_bad_shapes():
    with pytest.raises(ValueError, match="unknown model name"):
        Config.from_name("nope")
    with pytest.raises(ValueError, match="not divisible by n_query_groups"):
        Config(n_head=6, n_query_groups=4, n_embd=96)
