"""Dataset loader for the sample tasks: the JSON-lines files in data/ beside this file.

The task YAMLs name it as `custom_dataset`, so the files are found from the YAML's own folder whatever the
working directory (a relative `data_files` in `dataset_kwargs` would resolve against the process CWD).
"""

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def load(data_file: str, **_task_metadata):
    """`data_file` comes from the task's `dataset_kwargs`; lm-eval also passes the task metadata (ignored)."""
    import datasets

    path = DATA / data_file
    if not path.is_file():
        raise FileNotFoundError(f"sample task data not found: {path} (run eval/tasks/make_sample_tasks.py)")
    return datasets.load_dataset("json", data_files={"test": str(path)})
