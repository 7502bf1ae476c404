"""The row gate (`row_gate=True`): SGU's keep / prune / reverse over forget rows, wired for any objective.

Before unlearning, the frozen target scores the forget rows and the holdout rows (same kind, never trained on)
by mean answer NLL; each forget row gets a band of the holdout distribution by its rank (`row_bands`), stored
as the columns `row_gate_low` / `row_gate_high`. At each step the current model's mean answer NLL of the batch's
rows (no gradient) gives +1 / 0 / -1 per row (`row_gate_weights`): a kept row contributes the objective's loss,
a pruned one nothing, a reversed one (past its band) its answer NLL, whose descent pulls it back. (Not minus the
objective's loss: for an unbounded objective such as AltPO's that runs away, and the model with it.) The aim is
fixed at the start, unlike the calibrated objective's, which moves with the model.
"""

from __future__ import annotations

from typing import Any

import torch

from sgu_llm.core.losses import row_bands, row_gate_weights
from sgu_llm.data.pairing import ROW_FLOATS, collate_rows, prepare_qa_dataset, training_view

SCORE_BATCH = 32


@torch.no_grad()
def mean_answer_nll(task: Any, model: Any, rows: Any, pad_id: int) -> torch.Tensor:
    """Per-row mean answer-token NLL of tokenised rows under `model` (eval mode, no gradient), on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows), SCORE_BATCH):
        chunk = [{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows.select(
            range(start, min(start + SCORE_BATCH, len(rows))))]
        batch = {k: v.to(device) for k, v in collate_rows(chunk, pad_id).items()}
        nll, n = task.example_losses(model, batch)
        out.append((nll / n.clamp_min(1)).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def add_row_bands(task: Any, model: Any, args: Any, forget: Any, holdout: Any, tokenizer: Any) -> Any:
    """The tokenised forget rows with their bands (`row_gate_low`, `row_gate_high`), from `model` (the target,
    before unlearning) and the holdout rows' question/answer pairs."""
    if getattr(task, "name", None) != "causal_lm":
        raise ValueError(f"row_gate scores rows by answer NLL and runs on task='causal_lm' only, got {task.name!r}")
    if holdout is None or len(holdout) == 0:
        raise ValueError(
            "row_gate needs holdout rows (question/answer pairs of the same kind that no model trained on, e.g. "
            "TOFU-style holdout authors) for its bands: pass holdout_dataset= to the trainer, or holdout_split in "
            "a recipe; or set row_gate=False"
        )
    if any(c in forget.column_names for c in ROW_FLOATS):
        return forget
    fmt = dict(prompt_format=args.prompt_format, max_length=args.max_length, system_prompt=args.system_prompt)
    held = prepare_qa_dataset(training_view(holdout), tokenizer, "holdout", **fmt)
    pad = tokenizer.pad_token_id
    low, high = row_bands(
        mean_answer_nll(task, model, forget, pad), mean_answer_nll(task, model, held, pad), args.row_gate_width
    )
    return forget.add_column("row_gate_low", low.tolist()).add_column("row_gate_high", high.tolist())


def gate_rows(task: Any, model: Any, batch: dict[str, torch.Tensor], per_row: torch.Tensor, units: str,
              log: Any) -> torch.Tensor:
    """The objective's per-row losses of a forget batch under the row gate: kept where the row's current mean
    answer NLL is below its band, 0 inside it, and where it is past the band the row's answer NLL (in the
    objective's units: summed for "tokens", the row mean for "examples"), whose descent pulls the row back.
    Logs the fractions kept, pruned and reversed (`rowgate/keep|prune|reverse`)."""
    with torch.no_grad():
        nll, n = task.example_losses(model, batch)
        score = (nll / n.clamp_min(1)).float()
    weights = row_gate_weights(score, batch["row_gate_low"].to(score), batch["row_gate_high"].to(score))
    rows = len(weights)
    log("rowgate/keep", (weights > 0).sum().float(), rows)
    log("rowgate/prune", (weights == 0).sum().float(), rows)
    log("rowgate/reverse", (weights < 0).sum().float(), rows)
    gated = per_row * (weights > 0).to(per_row.dtype)
    back = (weights < 0).nonzero().flatten()
    if len(back) == 0:
        return gated
    sub = {k: v[back] for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}
    nll_back, n_back = task.example_losses(model, sub)
    pull = nll_back if units == "tokens" else nll_back / n_back.clamp_min(1)
    return gated.index_add(0, back.to(gated.device), pull.to(gated.dtype))
