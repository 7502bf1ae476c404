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
    return datasets.load_dataset(LOCAL_FORMATS[ext], data_files=path, split="train")
