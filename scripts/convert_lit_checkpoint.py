"""Convert a lit_gpt checkpoint into an HF Llama directory that `LlamaForCausalLM.from_pretrained` loads.

    python scripts/convert_lit_checkpoint.py --checkpoint_path out/run/lit_model.pth --out_dir out/run/hf
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_gpt.config import Config  # noqa: E402
from lit_gpt.convert import (TOKENIZER_FILES, atomic_output_dir, check_tokenizer_vocab,  # noqa: E402
                             copy_weights_llama, lit_config_to_hf)
from lit_gpt.tokenizer import Tokenizer, has_tokenizer  # noqa: E402
from lit_gpt.utils import CheckpointError, exit_code, load_state_dict  # noqa: E402


def convert_lit_checkpoint(checkpoint_path: Path, out_dir: Path, model_name: str = None) -> Config:
    if not checkpoint_path.is_file():
        raise CheckpointError(f"checkpoint file not found: {checkpoint_path}")
    source_dir = checkpoint_path.parent
    if model_name is not None:
        config = Config.from_name(model_name)
    elif (source_dir / "lit_config.json").is_file():
        config = Config.from_json(source_dir / "lit_config.json")
    else:
        raise CheckpointError(f"no lit_config.json beside {checkpoint_path}; pass --model_name")
    check_tokenizer_vocab(source_dir, config)
    state = copy_weights_llama(config, load_state_dict(checkpoint_path))
    dtype = next(iter(state.values())).dtype
    bos_id, eos_id = _special_ids(source_dir)
    hf_config = lit_config_to_hf(config, dtype, bos_id, eos_id)

    from safetensors.torch import save_file

    with atomic_output_dir(out_dir) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        for name in TOKENIZER_FILES:
            if (source_dir / name).is_file():
                shutil.copy2(source_dir / name, tmp / name)
    print(f"wrote {out_dir} ({config.name}, {dtype})", file=sys.stderr)
    return config


def _special_ids(directory: Path):
    if not has_tokenizer(directory):
        return 1, 2  # Llama's <s> and </s>
    tokenizer = Tokenizer(directory)
    return tokenizer.bos_id, tokenizer.eos_id


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint_path", type=Path, required=True,
                        help="lit_model.pth / .safetensors, or a training checkpoint with the weights under 'model'")
    parser.add_argument("--out_dir", type=Path, required=True,
                        help="HF directory to write (config.json, model.safetensors, tokenizer files)")
    parser.add_argument("--model_name", default=None,
                        help="a lit_gpt config name (default: lit_config.json beside the checkpoint)")
    args = parser.parse_args(argv)
    return exit_code(lambda: convert_lit_checkpoint(args.checkpoint_path, args.out_dir, args.model_name))


if __name__ == "__main__":
    sys.exit(main())
