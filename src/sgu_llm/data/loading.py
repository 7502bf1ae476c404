"""Local JSON / JSONL / Parquet files in TOFU schema."""

from __future__ import annotations

import os
from typing import Any

LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def load_local_split(path: str) -> Any:
    """A JSON, JSONL or Parquet file in TOFU schema as a `datasets.Dataset`."""
    import datasets

    ext = os.path.splitext(path)[1].lower()
    if ext not in LOCAL_FORMATS:
        raise ValueError(f"unsupported data file {path!r}: use one of {sorted(LOCAL_FORMATS)}")
    if not os.path.exists(path):
        raise ValueError(f"data file {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise ValueError(f"data file {path!r} is empty: it needs one TOFU row per line (JSONL) or a JSON list")
    try:
        return datasets.load_dataset(LOCAL_FORMATS[ext], data_files=path, split="train")
    except Exception as err:  # datasets wraps parse errors without the file name
        cause = err.__cause__ or err.__context__ or err
        raise ValueError(
            f"data file {path!r} could not be read as {LOCAL_FORMATS[ext]} ({type(cause).__name__}: "
            f"{str(cause)[:200]}): fix or regenerate the file (JSON lines or a JSON list of rows with TOFU fields)"
        ) from err
