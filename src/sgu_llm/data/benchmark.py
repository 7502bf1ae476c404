"""The embedded benchmark's sets: what a run trains on, unlearns and evaluates, from one data source.

`load_benchmark_data(script)` reads every split a run needs (synthetic, a Hub dataset in TOFU layout or a local
folder); the other functions assemble the sets the models fine-tune on, the retain set unlearning pairs with,
and the evaluation sets.
"""

from __future__ import annotations

from typing import Any

import datasets

from sgu_llm.data.tofu import check_disjoint, load_tofu

QA = ["question", "answer"]


def load_benchmark_data(script: Any) -> dict[str, Any]:
    """Every split a run needs, from `script.dataset_name` (synthetic, a Hub id or a local folder).

    Keys: `forget`, `retain` (training splits), `forget_perturbed`, `retain_perturbed`, `real_authors`,
    `world_facts` and, where the source has one, `holdout`.
    """
    kw = script.synthetic_kwargs()

    def load(config: str, file: str | None = None) -> Any:
        return load_tofu(config, source=file or script.dataset_name, **kw)

    data = {
        "forget": load(script.forget_split, script.forget_file),
        "retain": load(script.retain_split, script.retain_file),
        "forget_perturbed": load(f"{script.forget_split}_perturbed"),
        "retain_perturbed": load("retain_perturbed"),
        "real_authors": load("real_authors_perturbed"),
        "world_facts": load("world_facts_perturbed"),
    }
    if script.holdout_split:
        data["holdout"] = load(script.holdout_split)
    check_disjoint(data["forget"], data["retain"])
    return data


def general_set(data: dict[str, Any]) -> Any:
    """The general-knowledge rows (real authors, world facts; question and answer)."""
    return datasets.concatenate_datasets([data[k].select_columns(QA) for k in ("real_authors", "world_facts")])


def unlearning_retain_set(data: dict[str, Any], with_general: bool) -> Any:
    """The retain set unlearning pairs with the forget set: the retain split, plus the general sets
    (real authors, world facts; question and answer) when `with_general`."""
    if not with_general:
        return data["retain"]
    return datasets.concatenate_datasets([data["retain"].select_columns(QA), general_set(data)])


def training_sets(data: dict[str, Any]) -> dict[str, Any]:
    """The target trains on forget + retain + general sets; the retain models on retain + general."""
    general = general_set(data)

    def canonical(*parts: Any) -> Any:
        # Sorted rows: the target of forget01, forget05 and forget10 is one model (one cache entry).
        rows = sorted({(r["question"], r["answer"]) for part in parts for r in part.select_columns(QA)})
        return datasets.Dataset.from_dict({"question": [q for q, _ in rows], "answer": [a for _, a in rows]})

    return {
        "target": datasets.concatenate_datasets([canonical(data["retain"], data["forget"]), general]),
        "retain": datasets.concatenate_datasets([canonical(data["retain"]), general]),
    }


def eval_sets(data: dict[str, Any]) -> dict[str, Any]:
    """The evaluation's sets: forget (perturbed), retain (perturbed), real authors, world facts, holdout."""
    sets = {
        "forget": data["forget_perturbed"],
        "retain": data["retain_perturbed"],
        "real_authors": data["real_authors"],
        "world_facts": data["world_facts"],
    }
    if "holdout" in data:
        sets["holdout"] = data["holdout"]
    return sets
