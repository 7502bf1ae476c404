"""TOFU configs from the Hub (`locuslab/TOFU`), a local folder or file in the same schema, or the synthetic set.

One loader serves all three, so the code path a user runs on the Hub is the one
tests run on local files.

Example:
    >>> ds = load_tofu("forget10", source="synthetic", num_authors=20)
    >>> ds.column_names
    ['question', 'answer']
"""

from __future__ import annotations

import os
from typing import Any

from sgu_llm.data.loading import LOCAL_FORMATS, load_local_split
from sgu_llm.data.synthetic import synthetic_tofu

HUB_ID = "locuslab/TOFU"
PERTURBED_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answer", "paraphrased_question")
GENERAL_FIELDS = ("question", "answer", "perturbed_answer")


def required_fields(config: str) -> tuple[str, ...]:
    """The fields a TOFU config must have (as `locuslab/TOFU` defines them)."""
    if config.startswith(("real_authors", "world_facts")):
        return GENERAL_FIELDS
    if config.endswith("_perturbed") or config.startswith("holdout"):
        return PERTURBED_FIELDS
    return ("question", "answer")


def validate_schema(dataset: Any, config: str, origin: str) -> Any:
    missing = [f for f in required_fields(config) if f not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{origin} (TOFU config {config!r}) is missing field(s) {missing}; it has {dataset.column_names}. "
            f"Rows of {config!r} need {list(required_fields(config))}."
        )
    if len(dataset) == 0:
        raise ValueError(f"{origin} (TOFU config {config!r}) has no rows")
    return dataset


def _local_file(folder: str, config: str) -> str | None:
    for ext in LOCAL_FORMATS:
        path = os.path.join(folder, config + ext)
        if os.path.exists(path):
            return path
    return None


def load_tofu(config: str, source: str = HUB_ID, **synthetic_kwargs: Any) -> Any:
    """Load one TOFU config as a `datasets.Dataset`, checking its fields.

    Args:
        config: a `locuslab/TOFU` config name (`forget10`, `retain90`, `forget10_perturbed`,
            `retain_perturbed`, `real_authors_perturbed`, `world_facts_perturbed`, ...).
        source: `"locuslab/TOFU"` (or another Hub id) for `datasets.load_dataset`; a folder
            holding `<config>.json|jsonl|parquet`; a single such file; or `"synthetic"`.
        **synthetic_kwargs: passed to `synthetic_tofu` when `source="synthetic"`.
    """
    if source == "synthetic":
        splits = synthetic_tofu(**synthetic_kwargs)
        if config not in splits:
            raise ValueError(f"the synthetic benchmark has no config {config!r}; it has {sorted(splits)}")
        return validate_schema(splits[config], config, "synthetic benchmark")
    if os.path.isdir(source):
        path = _local_file(source, config)
        if path is None:
            raise ValueError(
                f"no file for TOFU config {config!r} in {source!r} (looked for {config}.json/.jsonl/.parquet)"
            )
        return validate_schema(load_local_split(path), config, path)
    if os.path.splitext(source)[1].lower() in LOCAL_FORMATS:
        return validate_schema(load_local_split(source), config, source)
    import datasets

    return validate_schema(
        datasets.load_dataset(source, name=config, split="train"), config, f"{source}:{config}"
    )


def check_disjoint(forget: Any, retain: Any) -> None:
    """Refuse a forget split that shares questions with its retain split."""
    shared = set(forget["question"]) & set(retain["question"])
    if shared:
        example = sorted(shared)[0]
        raise ValueError(
            f"the forget and retain splits share {len(shared)} question(s), e.g. {example!r}: a model cannot forget "
            "what it keeps training on. Use matching splits (forget10 with retain90) or remove the overlap."
        )


def save_splits(splits: dict[str, Any], folder: str) -> None:
    """Write each config to `folder/<config>.json` (JSON lines), the layout `load_tofu` reads back."""
    os.makedirs(folder, exist_ok=True)
    for name, ds in splits.items():
        ds.to_json(os.path.join(folder, f"{name}.json"), lines=True)
