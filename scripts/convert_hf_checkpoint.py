"""Convert an HF Llama checkpoint directory into lit_gpt's `lit_model.pth` + `lit_config.json`.

    python scripts/convert_hf_checkpoint.py --checkpoint_dir checkpoints/TinyLlama-1.1B
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_gpt.config import Config  # noqa: E402
from lit_gpt.convert import (DTYPES, atomic_output_dir, cast, check_tokenizer_vocab,  # noqa: E402
                             copy_weights_hf_llama, hf_config_to_lit, load_hf_state_dict, read_json)
from lit_gpt.utils import CheckpointError, exit_code  # noqa: E402


def convert_hf_checkpoint(checkpoint_dir: Path, model_name: str = None, dtype: str = None) -> Config:
    if not checkpoint_dir.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {checkpoint_dir}")
    if model_name is not None:
        config = Config.from_name(model_name)
    else:
        config = hf_config_to_lit(read_json(checkpoint_dir / "config.json"), name=checkpoint_dir.name)
    check_tokenizer_vocab(checkpoint_dir, config)
    print(f"reading {checkpoint_dir}", file=sys.stderr)
    state = copy_weights_hf_llama(config, load_hf_state_dict(checkpoint_dir))
    state = cast(state, DTYPES[dtype] if dtype else None)
    with atomic_output_dir(checkpoint_dir) as tmp:
        torch.save(state, tmp / "lit_model.pth")
        config.to_json(tmp / "lit_config.json")
    print(f"wrote {checkpoint_dir / 'lit_model.pth'} and lit_config.json ({config.name})", file=sys.stderr)
    return config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint_dir", type=Path, required=True,
                        help="HF directory with config.json and *.safetensors or pytorch_model*.bin; "
                             "the lit files are written into it")
    parser.add_argument("--model_name", default=None,
                        help="a lit_gpt config name to use instead of reading config.json")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="cast the weights (default: keep the checkpoint's dtype)")
    args = parser.parse_args(argv)
    return exit_code(lambda: convert_hf_checkpoint(args.checkpoint_dir, args.model_name, args.dtype))


if __name__ == "__main__":
    sys.exit(main())
