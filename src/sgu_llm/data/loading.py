"""Load forget/retain splits: the synthetic benchmark, the Hugging Face Hub, or local files."""

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


def load_split(
    dataset_name: str,
    split: str,
    *,
    data_file: str | None = None,
    synthetic_num_authors: int = 20,
    synthetic_qa_per_author: int = 10,
    synthetic_seed: int = 0,
) -> Any:
    """One TOFU-style split.

    Args:
        dataset_name: `"synthetic"` (generated locally), or a Hub dataset such
            as `"locuslab/TOFU"` whose configs are split names.
        split: a TOFU config name, e.g. `forget10`, `retain90`.
        data_file: a local JSON/JSONL/Parquet file; overrides the two above.

    Example:
        >>> len(load_split("synthetic", "forget10", synthetic_num_authors=20))
        20
    """
    if data_file:
        return load_local_split(data_file)
    if dataset_name == "synthetic":
        from sgu_llm.data.synthetic import synthetic_tofu

        splits = synthetic_tofu(synthetic_num_authors, synthetic_qa_per_author, synthetic_seed)
        if split not in splits:
            raise ValueError(f"the synthetic benchmark has no split {split!r}; it has {sorted(splits)}")
        return splits[split]
    import datasets

    return datasets.load_dataset(dataset_name, name=split, split="train")
