"""--trainable all|new|REGEX (issue 13, item 3): LLaMA-Pro's recipe, identity blocks grown by `--op zero-depth
--layers pro:K` and trained alone. Frozen tensors stay bitwise the base's, get no optimizer state, under one
process, DDP and FSDP; a resumed run continues bitwise as an unbroken one."""

import sys

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader
from conftest import command_error, in_one_process, run_group
from test_pretrain import MODEL, SCRIPT, args_for, data_dir, final_weights, metrics, train  # noqa: F401

from lit_gpt import Config
from lit_gpt.consolidate import consolidate_optimizer
from lit_gpt.model import GPT
from pretrain.train_args import UsageError
from pretrain.trainable import freeze, new_layers, trainable_names

NEW = (2, 5)  # pro:2 on 4 layers -> 6: a copy of layer 1 after layers 0-1 and of layer 3 after layers 2-3


def test_new_layers_are_the_ones_growth_created():
    assert new_layers({"operator": "zero-depth", "index_map": [0, 1, 1, 2, 3, 3]}) == [2, 5]  # pro:2
    assert new_layers({"operator": "stack", "index_map": [0, 1, 0, 1]}) == [2, 3]
    assert new_layers({"operator": "random-depth", "index_map": [0, 1, None, None]}) == [2, 3]
    with pytest.raises(UsageError, match="created no layers"):
        new_layers({"operator": "zero-width", "index_map": None})
    with pytest.raises(UsageError, match="needs a grown --initial_checkpoint"):
        new_layers({})


def test_regular_expressions_select_names_and_a_tied_tensor_trains_by_either_name():
    model = GPT(Config(**{**MODEL, "tie_embeddings": True}))
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    assert trainable_names("all", names, None) == set(names)
    assert trainable_names(r"h\.1\.attn", names, None) == {"transformer.h.1.attn.attn.weight",
                                                           "transformer.h.1.attn.proj.weight"}
    with pytest.raises(UsageError, match="is not a regular expression"):
        trainable_names("attn(", names, None)
    with pytest.raises(UsageError, match="matches none of the model's"):
        trainable_names("adapter", names, None)
    trained = freeze(model, trainable_names("lm_head", names, None), lambda n: n)
    assert trained == model.transformer.wte.weight.numel()
    assert [n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad] == \
        ["lm_head.weight", "transformer.wte.weight"]


@pytest.fixture(scope="module")
def grown(data_dir, tmp_path_factory):  # noqa: F811
    """A 4-layer base trained 3 steps, grown to 6 by LLaMA-Pro's expansion (identity copies)."""
    root = tmp_path_factory.mktemp("pro")
    base_config = root / "base.json"
    Config(**{**MODEL, "n_layer": 4}).to_json(base_config)
    train(data_dir, root / "base", "--model_name", base_config, "--max_steps", 3, "--eval_interval", 0,
          "--save_interval", 0)
    Config(**{**MODEL, "n_layer": 6}).to_json(root / "target.json")
    in_one_process([["growth", "grow", "--src", root / "base" / "final", "--target", root / "target.json",
                     "--op", "zero-depth", "--layers", "pro:2", "--out", root / "grown"]], root)
    return root


def continued(data_dir, grown, out_dir, *extra):  # noqa: F811
    return args_for(data_dir, out_dir, "--model_name", grown / "target.json", "--initial_checkpoint",
                    grown / "grown", "--eval_interval", 0, "--trainable", "new", *extra)


def assert_only_new_blocks_changed(before, after):
    for key, tensor in before.items():
        new = key.startswith(tuple(f"transformer.h.{j}." for j in NEW))
        assert torch.equal(after[key], tensor) != new, key  # frozen: bitwise the same; new: moved
    assert not torch.equal(after["transformer.h.2.attn.proj.weight"], torch.zeros_like(before["transformer.h.2.attn.proj.weight"]))


def moved(moments):
    """The layers (as strings) whose AdamW moments are not all zero; "wte" and the like for other tensors."""
    return {k.split(".")[2] if k.startswith("transformer.h.") else k for k, v in moments["exp_avg_sq"].items()
            if v.any()}


def test_new_blocks_train_alone_without_optimizer_state_and_resume_bitwise(data_dir, grown, tmp_path):  # noqa: F811
    in_one_process([
        ["pretrain/tinyllama.py", *continued(data_dir, grown, tmp_path / "straight", "--max_steps", 4,
                                             "--save_interval", 2)],
        ["pretrain/tinyllama.py", *continued(data_dir, grown, tmp_path / "broken", "--max_steps", 2,
                                             "--save_interval", 2)],
        ["pretrain/tinyllama.py", *continued(data_dir, grown, tmp_path / "broken", "--max_steps", 4,
                                             "--save_interval", 2, "--resume", "auto")],
        # a grown run's export still names the new layers (its growth.json), so LLaMA-Pro training goes on from it
        ["pretrain/tinyllama.py", *continued(data_dir, grown, tmp_path / "again", "--max_steps", 1,
                                             "--initial_checkpoint", tmp_path / "straight" / "final")],
    ], tmp_path)
    assert_only_new_blocks_changed(final_weights(tmp_path / "straight"), final_weights(tmp_path / "again"))
    before = torch.load(grown / "grown" / "lit_model.pth", weights_only=True)
    after = final_weights(tmp_path / "straight")
    assert_only_new_blocks_changed(before, after)
    moments = consolidate_optimizer(tmp_path / "straight" / "step-00000002")
    assert moved(moments) == {str(j) for j in NEW}  # frozen parameters: no state saved, zeros here
    saved = FileSystemReader(str(tmp_path / "straight" / "step-00000002")).read_metadata().state_dict_metadata
    assert {k.split(".")[4] for k in saved if k.startswith("optimizer.state.")} == {str(j) for j in NEW}
    resumed = final_weights(tmp_path / "broken")
    assert all(torch.equal(resumed[k], after[k]) for k in after)
    assert [metrics(tmp_path / "broken")[s]["train_loss"] for s in (3, 4)] == \
        [metrics(tmp_path / "straight")[s]["train_loss"] for s in (3, 4)]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_frozen_layers_stay_bitwise_under_two_processes(data_dir, grown, tmp_path, strategy):  # noqa: F811
    flags = continued(data_dir, grown, tmp_path, "--max_steps", 2, "--save_interval", 2, "--devices", 2,
                      "--strategy", strategy)
    result = run_group([sys.executable, str(SCRIPT), *flags], 300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert_only_new_blocks_changed(torch.load(grown / "grown" / "lit_model.pth", weights_only=True),
                                   final_weights(tmp_path))
    assert moved(consolidate_optimizer(tmp_path / "step-00000002")) == {str(j) for j in NEW}


def test_bad_trainable_is_one_line_before_any_work(data_dir, grown, tmp_path, capsys):  # noqa: F811
    from pretrain.tinyllama import run

    plain = args_for(data_dir, tmp_path / "o", "--max_steps", 1)
    for argv, words in [
        ([*plain, "--trainable", "new"], "needs a grown --initial_checkpoint"),
        ([*plain, "--trainable", "h\\.(1"], "is not a regular expression"),
        ([*plain, "--trainable", "adapter"], "matches none of the model's"),
    ]:
        assert words in command_error(capsys, run, argv, 1)
    assert not (tmp_path / "o").exists()
    assert run(continued(data_dir, grown, tmp_path / "r", "--max_steps", 1, "--save_interval", 1)) == 0
    capsys.readouterr()
    resume = [*continued(data_dir, grown, tmp_path / "r", "--max_steps", 2, "--resume", "auto"), "--trainable", "all"]
    assert "was trained with --trainable new, this run asks for all" in command_error(capsys, run, resume, 1)
