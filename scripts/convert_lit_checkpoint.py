"""Convert a lit_gpt checkpoint into HF Llama weights, in this repo's form or in upstream TinyLlama's.

This repo's form (--checkpoint_path) writes an HF directory that `AutoModelForCausalLM.from_pretrained` loads:
a `LlamaForCausalLM`, or a `Qwen2ForCausalLM` for a model with biases on q, k, v only
(`lit_gpt.convert.lit_config_to_hf`):

    python scripts/convert_lit_checkpoint.py --checkpoint_path out/run/lit_model.pth --out_dir out/run/hf

It holds config.json, model.safetensors and the tokenizer files found beside the checkpoint; the directory is
written under a temporary name and renamed when complete, and an existing non-empty one is replaced only with
--force.

Upstream TinyLlama's form (--checkpoint_name) takes --out_dir as the folder that HOLDS the checkpoint, as upstream
did: DIR/NAME is upstream's iter-NNNNNN-ckpt.pth (the weights under 'model'; scripts/export_checkpoint.py
--format upstream writes one from a run of ours) or a bare lit_model.pth. The outputs go beside it:

    python scripts/convert_lit_checkpoint.py --checkpoint_name iter-100000-ckpt.pth --out_dir DIR \\
        --model_name tiny_LLaMA_1b [--model_only False]

DIR/iter-100000-ckpt.bin holds the HF-named state dict saved with torch.save (the tensors this repo's form puts
into model.safetensors); with --model_only False also DIR/config.json. For `from_pretrained`, put the two in a
folder with the .bin named pytorch_model.bin (or use this repo's form, which writes that folder). Each file is
written under a temporary name and renamed; an existing one is replaced only with --force.

Both forms take the model from --model_name, else the lit_config.json beside the checkpoint, and refuse weights
that do not match it, a tokenizer beside them with more tokens than the embedding has rows, and random-* grown
weights whose growth masks are not baked in.
"""

import json
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_gpt.exits import exit_code, guard_command  # noqa: E402

if __name__ == "__main__":  # before torch: Ctrl-C while importing is one line
    guard_command()

from lit_gpt.cli import ArgumentParser, parse_bool  # noqa: E402
from lit_gpt.checkpoint import check_masks_baked, own_storages  # noqa: E402
from lit_gpt.config import Config  # noqa: E402
from lit_gpt.convert import (TOKENIZER_FILES, check_tokenizer_vocab, copy_weights_llama,  # noqa: E402
                             lit_config_to_hf, save_safetensors)
from lit_gpt.files import atomic_dir, atomic_file, check_writable_target, missing, save_torch  # noqa: E402
from lit_gpt.tokenizer import Tokenizer, has_tokenizer  # noqa: E402
from lit_gpt.utils import CheckpointError, load_state_dict  # noqa: E402


def convert_lit_checkpoint(checkpoint_path: Path, out_dir: Path, model_name: str = None,
                           force: bool = False) -> Config:
    """This repo's form: writes `out_dir` with config.json, model.safetensors and the tokenizer files beside the
    checkpoint.

    Raises:
        CheckpointError: a missing or unreadable checkpoint, or one that does not match its config.
        ValueError: `out_dir` exists and is not empty and `force` is not set, or it holds the checkpoint.
        OSError: `out_dir` cannot be written (the error names the path); nothing is left behind.
    """
    if why := missing(checkpoint_path):
        raise CheckpointError(f"checkpoint file {checkpoint_path}: {why}; give the lit_model.pth")
    check_writable_target(out_dir, force, inputs={"the checkpoint": checkpoint_path}, what=f"--out_dir {out_dir}")
    config, state, hf_config = hf_weights(checkpoint_path, model_name)
    source_dir = checkpoint_path.parent
    with atomic_dir(out_dir) as tmp:
        save_safetensors(state, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        for name in TOKENIZER_FILES:
            if (source_dir / name).is_file():
                shutil.copyfile(source_dir / name, tmp / name)  # the umask, not the source's mode
    print(f"wrote {out_dir} ({config.name}, {hf_config['torch_dtype']})", file=sys.stderr)
    return config


def convert_upstream_form(checkpoint_name: str, out_dir: Path, model_name: str = None, model_only: bool = True,
                          force: bool = False) -> Path:
    """Upstream TinyLlama's form: `out_dir/checkpoint_name` (an iter-NNNNNN-ckpt.pth or a lit_model.pth) into
    `<its stem>.bin` beside it, the HF state dict saved with torch.save, and unless `model_only` config.json there
    too. Returns the .bin's path.

    Raises:
        CheckpointError: a missing or unreadable checkpoint (the line says that --out_dir is the folder holding
            it), one that does not match its config, or no config (no --model_name, no lit_config.json).
        ValueError: an output exists and `force` is not set (one line naming it), or it is the checkpoint.
        OSError: a write failed (the error names the file); nothing is left behind.
    """
    checkpoint = out_dir / checkpoint_name
    if why := missing(checkpoint):
        raise CheckpointError(f"checkpoint file {checkpoint}: {why}; in upstream's form (--checkpoint_name) "
                              "--out_dir is the folder that holds the checkpoint")
    weights_file, config_file = checkpoint.with_suffix(".bin"), checkpoint.parent / "config.json"
    outputs = [weights_file] if model_only else [weights_file, config_file]
    for path in outputs:
        check_writable_target(path, force, inputs={"the checkpoint": checkpoint})
    config, state, hf_config = hf_weights(checkpoint, model_name)
    with ExitStack() as stack:  # both renamed into place only once both are written
        tmp = stack.enter_context(atomic_file(weights_file))
        save_torch(own_storages(state), tmp)
        if not model_only:
            stack.enter_context(atomic_file(config_file)).write_text(json.dumps(hf_config, indent=2) + "\n")
    print(f"wrote {' and '.join(map(str, outputs))} ({config.name}, {hf_config['torch_dtype']})", file=sys.stderr)
    return weights_file


def hf_weights(checkpoint_path: Path, model_name: str = None):
    """(config, HF state dict, HF config.json) of a lit checkpoint, the config from `model_name` (a name or a
    lit_config.json) or else the lit_config.json beside it.

    Raises:
        CheckpointError: no config, an unreadable checkpoint, weights that do not match the config, a tokenizer
            beside them with more tokens than embedding rows, or random-* grown weights whose masks are not baked.
    """
    source_dir = checkpoint_path.parent
    if model_name is not None:
        config = Config.load(model_name)
    elif (source_dir / "lit_config.json").is_file():
        config = Config.from_json(source_dir / "lit_config.json")
    else:
        raise CheckpointError(f"no lit_config.json beside {checkpoint_path}; pass --model_name")
    check_tokenizer_vocab(source_dir, config)
    check_masks_baked(source_dir)
    state = copy_weights_llama(config, load_state_dict(checkpoint_path))
    dtype = next(iter(state.values())).dtype
    return config, state, lit_config_to_hf(config, dtype, *_special_ids(source_dir))


def _special_ids(directory: Path):
    if not has_tokenizer(directory):
        return 1, 2  # Llama's <s> and </s>
    tokenizer = Tokenizer(directory)
    return tokenizer.bos_id, tokenizer.eos_id


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint_path", type=Path, default=None, help=(
        "this repo's form: lit_model.pth / .safetensors, or a training checkpoint with the weights under 'model'"))
    parser.add_argument("--checkpoint_name", default=None, help=(
        "upstream's form (giving it selects that form): the checkpoint's file name inside --out_dir, e.g. "
        "iter-100000-ckpt.pth or lit_model.pth"))
    parser.add_argument("--out_dir", type=Path, required=True, help=(
        "this repo's form: the HF directory to write (config.json, model.safetensors, tokenizer files); upstream's "
        "form: the folder holding --checkpoint_name, where <its name>.bin (and config.json) are written"))
    parser.add_argument("--model_name", default=None, help=(
        "both forms: a lit_gpt config name or a lit_config.json (default: the lit_config.json beside the checkpoint)"))
    parser.add_argument("--model_only", type=parse_bool, default=None, metavar="BOOL", help=(
        "upstream's form only: True writes only <name>.bin, False also config.json; takes True/False/true/false/1/0 "
        "(default: True, as upstream)"))
    parser.add_argument("--force", action="store_true", help=(
        "this repo's form: replace a non-empty --out_dir; upstream's form: replace an existing <name>.bin (and "
        "config.json with --model_only False) in --out_dir"))
    args = parser.parse_args(argv)
    if args.checkpoint_name is not None:
        if args.checkpoint_path is not None:
            parser.error("give --checkpoint_path FILE (this repo's form) or --checkpoint_name NAME (upstream's form, "
                         "--out_dir the folder holding it), not both")
        return exit_code(lambda: convert_upstream_form(args.checkpoint_name, args.out_dir, args.model_name,
                                                       True if args.model_only is None else args.model_only,
                                                       args.force))
    if args.model_only is not None:
        parser.error("--model_only belongs to upstream's form (--checkpoint_name NAME --out_dir DIR); with "
                     "--checkpoint_path config.json is always written")
    if args.checkpoint_path is None:
        parser.error("give --checkpoint_path FILE (writes an HF directory at --out_dir), or upstream's "
                     "--checkpoint_name NAME with --out_dir the folder holding it")
    return exit_code(lambda: convert_lit_checkpoint(args.checkpoint_path, args.out_dir, args.model_name,
                                                    args.force))


if __name__ == "__main__":
    sys.exit(main())
