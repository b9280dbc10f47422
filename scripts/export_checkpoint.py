"""Write the weights of a training checkpoint as `lit_model.pth` + `lit_config.json` (what growth, the
converters and eval read). Runs in one process whatever the number of ranks that saved the checkpoint.

    python scripts/export_checkpoint.py --checkpoint_dir out/run/step-00001000 --out_dir out/run/export-1000
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_gpt.checkpoint import check_masks_settled, consolidate, find_latest, write_weights  # noqa: E402
from lit_gpt.config import Config  # noqa: E402
from lit_gpt.utils import exit_code  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint_dir", type=Path, required=True,
                        help="a step-NNNNNNNN directory, or a run's out_dir (its newest checkpoint is taken)")
    parser.add_argument("--out_dir", type=Path, default=None, help="default: <checkpoint_dir>/export")
    parser.add_argument("--tokenizer_dir", type=Path, default=None, help="tokenizer files to copy beside the weights")
    args = parser.parse_args(argv)
    return exit_code(lambda: export(args.checkpoint_dir, args.out_dir, args.tokenizer_dir))


def export(checkpoint_dir: Path, out_dir: Path = None, tokenizer_dir: Path = None) -> None:
    path = checkpoint_dir
    if not (path / "meta.json").is_file() and path.is_dir():
        path = find_latest(path) or path
    state = consolidate(path)
    check_masks_settled(path)
    out = out_dir or path / "export"
    meta = json.loads((path / "meta.json").read_text())
    training = {k: meta[k] for k in ("step", "tokens", "flops")}
    write_weights(state, Config.from_json(path / "lit_config.json"), out, tokenizer_dir, training)
    print(f"wrote {out / 'lit_model.pth'} from {path}", file=sys.stderr)

if __name__ == "__main__":
    sys.exit(main())
