"""Convert a lit_gpt checkpoint into an HF directory that `AutoModelForCausalLM.from_pretrained` loads: a
`LlamaForCausalLM`, or a `Qwen2ForCausalLM` for a model with biases on q, k, v only (`lit_gpt.convert.lit_config_to_hf`).

    python scripts/convert_lit_checkpoint.py --checkpoint_path out/run/lit_model.pth --out_dir out/run/hf

The directory is written under a temporary name and renamed when complete; an existing non-empty one is
replaced only with --force.
"""

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_gpt.exits import exit_code, guard_command  # noqa: E402

if __name__ == "__main__":  # before torch: Ctrl-C while importing is one line
    guard_command()

from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt.checkpoint import check_masks_baked  # noqa: E402
from lit_gpt.config import Config  # noqa: E402
from lit_gpt.convert import (TOKENIZER_FILES, check_tokenizer_vocab, copy_weights_llama,  # noqa: E402
                             lit_config_to_hf, save_safetensors)
from lit_gpt.files import atomic_dir, check_writable_target, missing  # noqa: E402
from lit_gpt.tokenizer import Tokenizer, has_tokenizer  # noqa: E402
from lit_gpt.utils import CheckpointError, load_state_dict  # noqa: E402

def convert_lit_checkpoint(checkpoint_path: Path, out_dir: Path, model_name: str = None,
                           force: bool = False) -> Config:
    """Writes `out_dir` with config.json, model.safetensors and the tokenizer files beside the checkpoint.

    Raises:
        CheckpointError: a missing or unreadable checkpoint, or one that does not match its config.
        ValueError: `out_dir` exists and is not empty and `force` is not set, or it holds the checkpoint.
        OSError: `out_dir` cannot be written (the error names the path); nothing is left behind.
    """
    if why := missing(checkpoint_path):
        raise CheckpointError(f"checkpoint file {checkpoint_path}: {why}; give the lit_model.pth")
    check_writable_target(out_dir, force, inputs={"the checkpoint": checkpoint_path}, what=f"--out_dir {out_dir}")
    source_dir = checkpoint_path.parent
    if model_name is not None:
        config = Config.from_name(model_name)
    elif (source_dir / "lit_config.json").is_file():
        config = Config.from_json(source_dir / "lit_config.json")
    else:
        raise CheckpointError(f"no lit_config.json beside {checkpoint_path}; pass --model_name")
    check_tokenizer_vocab(source_dir, config)
    check_masks_baked(source_dir)
    state = copy_weights_llama(config, load_state_dict(checkpoint_path))
    dtype = next(iter(state.values())).dtype
    bos_id, eos_id = _special_ids(source_dir)
    hf_config = lit_config_to_hf(config, dtype, bos_id, eos_id)

    with atomic_dir(out_dir) as tmp:
        save_safetensors(state, tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        for name in TOKENIZER_FILES:
            if (source_dir / name).is_file():
                shutil.copyfile(source_dir / name, tmp / name)  # the umask, not the source's mode
    print(f"wrote {out_dir} ({config.name}, {dtype})", file=sys.stderr)
    return config


def _special_ids(directory: Path):
    if not has_tokenizer(directory):
        return 1, 2  # Llama's <s> and </s>
    tokenizer = Tokenizer(directory)
    return tokenizer.bos_id, tokenizer.eos_id


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint_path", type=Path, required=True,
                        help="lit_model.pth / .safetensors, or a training checkpoint with the weights under 'model'")
    parser.add_argument("--out_dir", type=Path, required=True,
                        help="HF directory to write (config.json, model.safetensors, tokenizer files)")
    parser.add_argument("--model_name", default=None,
                        help="a lit_gpt config name (default: lit_config.json beside the checkpoint)")
    parser.add_argument("--force", action="store_true", help="replace --out_dir if it exists and is not empty")
    args = parser.parse_args(argv)
    return exit_code(lambda: convert_lit_checkpoint(args.checkpoint_path, args.out_dir, args.model_name,
                                                    args.force))


if __name__ == "__main__":
    sys.exit(main())
