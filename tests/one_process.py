"""Test helper: commands run one after another in one process, each through its script's own entry function, so
a test that runs many tiny commands pays for the start-up of Python, torch and Lightning once (most of the time
of a tiny command) instead of once per command.

    python tests/one_process.py COMMANDS.json    # [["pretrain/tinyllama.py", flags...], ["growth", "grow", ...]]

Stops at the first command that ends non-zero, naming it on stderr, with its exit code.
"""

import functools
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# command -> (script, entry function): the function its `if __name__ == "__main__"` block calls
ENTRIES = {"pretrain/tinyllama.py": ("pretrain/tinyllama.py", "run"), "growth": ("growth/__main__.py", "main"),
           "scripts/export_checkpoint.py": ("scripts/export_checkpoint.py", "main"), "eval/run.py": ("eval/run.py", "main"),
           "eval/plot.py": ("eval/plot.py", "main")}


@functools.lru_cache(maxsize=None)
def entry(command: str):
    script, function = ENTRIES[command]
    # not named __main__, so the script's own `if __name__ == "__main__"` block stays out of it
    spec = importlib.util.spec_from_file_location(f"one_process_{Path(script).parent.name}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, function)


def main(path: str) -> int:
    for command, *argv in json.loads(Path(path).read_text()):
        code = entry(command)(argv) or 0
        if code:
            print(f"one_process: {command} {' '.join(argv)} ended with exit code {code}", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
