"""Convert an HF Llama-family checkpoint directory into lit_gpt's `lit_model.pth` + `lit_config.json`.

    python scripts/convert_hf_checkpoint.py --checkpoint_dir checkpoints/TinyLlama-1.1B

Families (`lit_gpt.convert`): LlamaForCausalLM (Llama, TinyLlama, SmolLM2, Llama 3.x with llama3 RoPE; tied
embeddings, attention_bias, head_dim) and Qwen2ForCausalLM (q/k/v biases); anything else is one `error:` line.

Both files are written into the checkpoint directory, under temporary names renamed when both are complete;
existing ones are replaced only with --force.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_gpt.exits import exit_code, guard_command  # noqa: E402

if __name__ == "__main__":  # before torch: Ctrl-C while importing is one line
    guard_command()

from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt.config import Config  # noqa: E402
from lit_gpt.convert import (DTYPES, cast, check_tokenizer_vocab, copy_weights_hf_llama,  # noqa: E402
                             hf_config_to_lit, load_hf_state_dict, read_json)
from lit_gpt.files import atomic_file, check_writable_target, save_torch  # noqa: E402
from lit_gpt.utils import CheckpointError  # noqa: E402


def convert_hf_checkpoint(checkpoint_dir: Path, model_name: str = None, dtype: str = None,
                          force: bool = False) -> Config:
    """Writes `lit_model.pth` and `lit_config.json` into `checkpoint_dir`.

    Raises:
        CheckpointError: a missing directory, config or weights, or a model lit_gpt cannot represent exactly.
        ValueError: an output file exists and `force` is not set.
        OSError: an output cannot be written (the error names it); nothing is left behind.
    """
    if not checkpoint_dir.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {checkpoint_dir}")
    weights_path, config_path = checkpoint_dir / "lit_model.pth", checkpoint_dir / "lit_config.json"
    for target in (weights_path, config_path):
        check_writable_target(target, force)
    if model_name is not None:
        config = Config.from_name(model_name)
    else:
        source = checkpoint_dir / "config.json"
        config = hf_config_to_lit(read_json(source), name=checkpoint_dir.name, source=str(source))
    check_tokenizer_vocab(checkpoint_dir, config)
    print(f"reading {checkpoint_dir}", file=sys.stderr)
    state = copy_weights_hf_llama(config, load_hf_state_dict(checkpoint_dir))
    state = cast(state, DTYPES[dtype] if dtype else None)
    # nested: neither file is renamed into place unless both were written
    with atomic_file(weights_path) as weights_tmp, atomic_file(config_path) as config_tmp:
        save_torch(state, weights_tmp)
        config.to_json(config_tmp)
    print(f"wrote {weights_path} and lit_config.json ({config.name})", file=sys.stderr)
    return config


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint_dir", type=Path, required=True,
                        help="HF directory with config.json and *.safetensors or pytorch_model*.bin; "
                             "the lit files are written into it")
    parser.add_argument("--model_name", default=None,
                        help="a lit_gpt config name to use instead of reading config.json")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="cast the weights (default: keep the checkpoint's dtype)")
    parser.add_argument("--force", action="store_true",
                        help="replace lit_model.pth and lit_config.json if the directory already has them")
    args = parser.parse_args(argv)
    return exit_code(lambda: convert_hf_checkpoint(args.checkpoint_dir, args.model_name, args.dtype, args.force))


if __name__ == "__main__":
    sys.exit(main())
