"""Tokenised forget/retain datasets, their pairing and batching."""

from __future__ import annotations

from typing import Any

import torch

from sgu_llm.data.prompts import DEFAULT_SYSTEM_PROMPT, tokenize_qa
from sgu_llm.losses import IGNORE_INDEX

MODEL_COLUMNS = ("input_ids", "attention_mask", "labels")
QA_COLUMNS = ("question", "answer")
TOKENIZED_COLUMNS = ("input_ids", "labels")


def prepare_qa_dataset(
    dataset: Any,
    tokenizer: Any,
    name: str,
    prompt_format: str = "phi",
    max_length: int = 512,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> Any:
    """Validate a forget/retain `datasets.Dataset` and tokenise it if needed.

    Accepts TOFU schema (`question`, `answer`) or already tokenised rows
    (`input_ids`, `labels`, optional `attention_mask`).

    Raises:
        ValueError: naming the problem and the fix, for a dataset that is not a
            `datasets.Dataset`, is empty, lacks the columns, or has rows with no
            answer token left after truncation.
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(
            f"the {name} set must be a datasets.Dataset, got {type(dataset).__name__}; "
            "wrap lists with datasets.Dataset.from_list(...)"
        )
    if len(dataset) == 0:
        raise ValueError(f"the {name} set is empty: pass a dataset with at least one row")
    cols = set(dataset.column_names)
    if set(TOKENIZED_COLUMNS) <= cols:
        # Tokenised rows are cut at max_length like tokenised QA pairs; the mask is rebuilt where missing.
        tokenized = dataset.map(
            lambda row: {
                "input_ids": row["input_ids"][:max_length],
                "labels": row["labels"][:max_length],
                "attention_mask": (row.get("attention_mask") or [1] * len(row["input_ids"]))[:max_length],
            },
            desc=f"checking {name} set",
        )
    elif set(QA_COLUMNS) <= cols:
        tokenized = dataset.map(
            lambda row: tokenize_qa(
                tokenizer, row["question"], row["answer"], prompt_format, max_length, system_prompt
            ),
            remove_columns=dataset.column_names,
            desc=f"tokenizing {name} set",
        )
    else:
        missing = sorted(set(QA_COLUMNS) - cols)
        raise ValueError(
            f"the {name} set has columns {sorted(cols)} but is missing {missing}: give it TOFU columns "
            f"{list(QA_COLUMNS)} or tokenized columns {list(TOKENIZED_COLUMNS)}"
        )
    tokenized = tokenized.select_columns(list(MODEL_COLUMNS))
    empty = [i for i, labels in enumerate(tokenized["labels"]) if all(t == IGNORE_INDEX for t in labels[1:])]
    if empty:
        raise ValueError(
            f"{len(empty)} row(s) of the {name} set (first: {empty[0]}) have no answer token to learn from after "
            f"truncation to max_length={max_length}: raise max_length or shorten the prompt"
        )
    return tokenized


class ForgetRetainDataset(torch.utils.data.Dataset):
    """One item per forget example, each paired with a retain example.

    As in the reference framework an epoch is one pass over the forget set.
    The retain partner of forget row i is a seeded permutation of the retain
    set, indexed by i, that changes with the epoch: the pairing does not depend
    on batch size, gradient accumulation or the number of processes.

    Example:
        >>> import datasets
        >>> f = datasets.Dataset.from_dict({"input_ids": [[1, 2]], "labels": [[-100, 2]]})
        >>> r = datasets.Dataset.from_dict({"input_ids": [[3, 4]], "labels": [[-100, 4]]})
        >>> sorted(ForgetRetainDataset(f, r)[0])
        ['forget', 'retain']
    """

    def __init__(self, forget: Any, retain: Any, seed: int = 0):
        self.forget, self.retain, self.seed = forget, retain, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if getattr(self, "epoch", None) == epoch:
            return
        self.epoch = epoch
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        self._retain_order = torch.randperm(len(self.retain), generator=gen).tolist()

    def __len__(self) -> int:
        return len(self.forget)

    def __getitem__(self, i: int) -> dict[str, dict[str, list[int]]]:
        j = self._retain_order[i % len(self._retain_order)]
        return {"forget": self.forget[i], "retain": self.retain[j]}


def pad_batch(rows: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad `input_ids` (with `pad_token_id`), `attention_mask` (0) and `labels` (-100)."""
    width = max(len(r["input_ids"]) for r in rows)
    pads = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    return {
        key: torch.tensor([list(r[key]) + [pad] * (width - len(r[key])) for r in rows], dtype=torch.long)
        for key, pad in pads.items()
    }


class PadCollator:
    """Collate QA rows into one right-padded batch (`pad_batch`): the one padding collator of the package."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return pad_batch(rows, self.pad_token_id)


class ForgetRetainCollator(PadCollator):
    """Collate paired items into `{"forget": batch, "retain": batch}`, each split padded by `PadCollator`."""

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, dict[str, torch.Tensor]]:
        return {
            split: super(ForgetRetainCollator, self).__call__([it[split] for it in items])
            for split in ("forget", "retain")
        }
