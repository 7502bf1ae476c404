"""Tokenised forget/retain datasets, their pairing and batching."""

from __future__ import annotations

from typing import Any

import torch

from sgu_llm.core.losses import IGNORE_INDEX
from sgu_llm.data.prompts import DEFAULT_SYSTEM_PROMPT, tokenize_qa

MODEL_COLUMNS = ("input_ids", "attention_mask", "labels")
QA_COLUMNS = ("question", "answer")
TOKENIZED_COLUMNS = ("input_ids", "labels")
ROW_FLOATS = ("row_gate_low", "row_gate_high")  # one number per forget row (the row gate's band)


def prepare_qa_dataset(
    dataset: Any,
    tokenizer: Any,
    name: str,
    prompt_format: str = "phi",
    max_length: int = 512,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    answer_sets: tuple[str, ...] = (),
) -> Any:
    """Validate a forget/retain `datasets.Dataset` and tokenise it if needed.

    Accepts TOFU schema (`question`, `answer`) or already tokenised rows
    (`input_ids`, `labels`, optional `attention_mask`). Each column named in `answer_sets` holds more
    answers to the row's question (a string or a list of strings: alternatives, "I don't know"); they
    are tokenised the same way into `<name>_input_ids` and `<name>_labels` (one list per answer).

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
        missing_sets = sorted(set(answer_sets) - cols)
        if missing_sets:
            raise ValueError(f"the {name} set lacks the answer column(s) {missing_sets} its objective needs")

        def tokenize(row: dict) -> dict:
            out = tokenize_qa(tokenizer, row["question"], row["answer"], prompt_format, max_length, system_prompt)
            for set_name in answer_sets:
                answers = row[set_name] if isinstance(row[set_name], list) else [row[set_name]]
                encoded = [
                    tokenize_qa(tokenizer, row["question"], a, prompt_format, max_length, system_prompt)
                    for a in answers
                ]
                out[f"{set_name}_input_ids"] = [e["input_ids"] for e in encoded]
                out[f"{set_name}_labels"] = [e["labels"] for e in encoded]
            return out

        tokenized = dataset.map(tokenize, remove_columns=dataset.column_names, desc=f"tokenizing {name} set")
    else:
        missing = sorted(set(QA_COLUMNS) - cols)
        raise ValueError(
            f"the {name} set has columns {sorted(cols)} but is missing {missing}: give it TOFU columns "
            f"{list(QA_COLUMNS)} or tokenized columns {list(TOKENIZED_COLUMNS)}"
        )
    extra = [f"{n}_{k}" for n in answer_sets for k in ("input_ids", "labels")]
    tokenized = tokenized.select_columns(list(MODEL_COLUMNS) + extra)
    empty = [i for i, labels in enumerate(tokenized["labels"]) if all(t == IGNORE_INDEX for t in labels[1:])]
    if empty:
        raise ValueError(
            f"{len(empty)} row(s) of the {name} set (first: {empty[0]}) have no answer token to learn from after "
            f"truncation to max_length={max_length}: raise max_length or shorten the prompt"
        )
    return tokenized


def ensure_pad_token(tokenizer: Any) -> None:
    """Pad with EOS when the tokenizer has no pad token (padding is masked out of attention and loss)."""
    if tokenizer is not None and getattr(tokenizer, "pad_token_id", 0) is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token


def training_view(dataset: Any, objective: Any = None) -> Any:
    """The columns training may read of a QA `datasets.Dataset`: `question`, `answer` and the answer sets the
    objective uses (`alternatives`, `idk`) when the caller supplied them. An evaluation copy of the split
    (TOFU's `*_perturbed`: paraphrased and perturbed answers) reaches an objective without those columns."""
    if dataset is None or not hasattr(dataset, "column_names") or not set(QA_COLUMNS) <= set(dataset.column_names):
        return dataset
    keep = list(QA_COLUMNS) + [c for c in getattr(objective, "answer_sets", ()) if c in dataset.column_names]
    keep += [c for c in ("generic_labels",) if c in dataset.column_names]
    return dataset.select_columns(keep)


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
        key: torch.tensor(
            [list(r.get(key) or [1] * len(r["input_ids"])) + [pad] * (width - len(r["input_ids"])) for r in rows],
            dtype=torch.long,
        )
        for key, pad in pads.items()
    }


def collate_rows(rows: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """`pad_batch` of the rows, plus what objectives add to forget rows: `generic_labels` (padded like
    `labels`), the row gate's bands (`ROW_FLOATS`, one float per row) and each answer set `<name>_input_ids` / `_labels` (lists of sequences per row), flattened into
    one padded batch `<name>_input_ids` / `_attention_mask` / `_labels` with `<name>_row`, the row each
    sequence answers. A batch whose rows hold no sequence of a set gets no `<name>_*` keys.

    Example:
        >>> rows = [{"input_ids": [5, 6], "labels": [-100, 6], "alt_input_ids": [[5, 7], [5, 8, 9]],
        ...          "alt_labels": [[-100, 7], [-100, 8, 9]]}]
        >>> batch = collate_rows(rows, pad_token_id=0)
        >>> batch["alt_input_ids"].tolist(), batch["alt_row"].tolist()
        ([[5, 7, 0], [5, 8, 9]], [0, 0])
    """
    batch = pad_batch(rows, pad_token_id)
    first = rows[0]
    if "generic_labels" in first:
        width = batch["labels"].shape[1]
        batch["generic_labels"] = torch.tensor(
            [list(r["generic_labels"]) + [IGNORE_INDEX] * (width - len(r["generic_labels"])) for r in rows]
        )
    for key in ROW_FLOATS:
        if key in first:
            batch[key] = torch.tensor([float(r[key]) for r in rows])
    for key in first:
        if not key.endswith("_input_ids") or key == "input_ids":
            continue
        name = key.removesuffix("_input_ids")
        seqs = [
            {"input_ids": ids, "labels": labels}
            for r in rows
            for ids, labels in zip(r[key], r[f"{name}_labels"])
        ]
        if not seqs:
            continue
        padded = pad_batch(seqs, pad_token_id)
        for k, v in padded.items():
            batch[f"{name}_{k}"] = v
        batch[f"{name}_row"] = torch.tensor([i for i, r in enumerate(rows) for _ in r[key]], dtype=torch.long)
    return batch


class PadCollator:
    """Collate QA rows into one right-padded batch (`pad_batch`): the one padding collator of the package."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return pad_batch(rows, self.pad_token_id)


class ForgetRetainCollator(PadCollator):
    """Collate paired items into `{"forget": batch, "retain": batch}`, each split by `collate_rows`."""

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, dict[str, torch.Tensor]]:
        return {split: collate_rows([it[split] for it in items], self.pad_token_id) for split in ("forget", "retain")}
