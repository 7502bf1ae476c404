"""Where unlearning acts: per-layer activation patching of the target by the unlearned model.

For a decoder layer L, the target runs with the output of its layer L (the residual stream,
`blocks.L.hook_resid_post`) replaced by the unlearned model's on the same inputs; the layers above L stay the
target's. The share of the answer NLL change (unlearned - target) this reproduces,

    fraction(L) = (NLL_patched(L) - NLL_target) / (NLL_unlearned - NLL_target),

on forget rows says how much of the forgetting the first L + 1 layers carry; the same on retain rows is the
collateral. Where unlearning changed only layers up to L (and not the final norm or the LM head), patching at L
or above reproduces the unlearned model exactly (fraction 1). The layer where the forget curve rises most is
where a probe should look.

The helpers here (padded batches in a fixed order, the activation at a hook point per batch, per-row answer
NLL with an edit of one hook point) also serve the feature-level tests in `sgu_llm.probe.features`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sgu_llm.data.pairing import pad_batch
from sgu_llm.evaluation.scoring import answer_token_scores
from sgu_llm.models.hooks import capture, decoder_layers, replace_activation, run_until_hook

Edit = Callable[[int, torch.Tensor], torch.Tensor]  # (batch index, activation) -> edited activation


def padded_batches(rows: list[dict], pad_token_id: int, batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
    """Tokenised rows as right-padded batches of `batch_size`, in row order."""
    return [pad_batch(rows[i : i + batch_size], pad_token_id) for i in range(0, len(rows), batch_size)]


def _inputs(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    device = next(model.parameters()).device
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


@torch.no_grad()
def activations_at(model: Any, hook_name: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The (rows, length, d) activation at `hook_name` for one padded batch (the forward stops there)."""
    with capture(model, hook_name, stop=True) as store:
        run_until_hook(model, **_inputs(model, batch))
    return store[0]


def _row_nll(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = _inputs(model, batch)
    s = answer_token_scores(model, inputs["input_ids"], inputs["attention_mask"], batch["labels"])
    return torch.stack([-lp.double().sum() / max(len(lp), 1) for lp in s["logp"].split(s["counts"].tolist())])


def _replace_by(source: list[torch.Tensor], i: int, x: torch.Tensor) -> torch.Tensor:
    return source[i].to(x.dtype)


@torch.no_grad()
def edited_nll(model: Any, batches: list[dict], hook_name: str | None = None, edit: Edit | None = None) -> np.ndarray:
    """Per-row mean answer NLL over `batches` (in order), with `edit(batch index, activation)` replacing the
    activation at `hook_name` when given."""
    was = model.training
    model.eval()
    out = []
    for i, batch in enumerate(batches):
        if edit is None:
            out.append(_row_nll(model, batch))
        else:
            with replace_activation(model, hook_name, functools.partial(edit, i)):
                out.append(_row_nll(model, batch))
    model.train(was)
    return torch.cat(out).numpy()


@torch.no_grad()
def layer_patch_curve(
    target: Any,
    unlearned: Any,
    forget_rows: list[dict],
    retain_rows: list[dict],
    pad_token_id: int,
    layers: list[int] | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Patch the target's `blocks.L.hook_resid_post` by the unlearned model's for each L in `layers` (default:
    all) and score tokenised forget and retain rows (mean answer NLL).

    Returns `layers`, `forget_fraction` / `retain_fraction` per layer (the share of each set's NLL change
    reproduced; nan where the models do not differ on that set), `forget_nll` / `retain_nll` per layer, the
    target's and unlearned model's NLLs, and `steepest_layer` (`steepest_layer`). Layers below the first one
    whose weights differ (`first_changed_layer`: SmolLM2's recipes unlearn only its top 8 of 30) are not run:
    patching them replaces an activation by itself, so their fraction is 0 exactly.
    """
    n_layers = len(decoder_layers(target))
    layers = list(range(n_layers)) if layers is None else sorted(layers)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"patch layers {bad} are outside the model's 0..{n_layers - 1}")
    was = unlearned.training
    unlearned.eval()
    sets = {"forget": padded_batches(forget_rows, pad_token_id, batch_size),
            "retain": padded_batches(retain_rows, pad_token_id, batch_size)}
    base = {k: float(edited_nll(target, b).mean()) for k, b in sets.items()}
    after = {k: float(edited_nll(unlearned, b).mean()) for k, b in sets.items()}
    first = first_changed_layer(target, unlearned)
    out: dict[str, Any] = {"layers": layers, "target_nll": base, "unlearned_nll": after, "first_changed_layer": first}
    for k, batches in sets.items():
        nll = []
        for layer in layers:
            if layer < first:  # nothing at or below this layer changed: the patch is the target's own activation
                nll.append(base[k])
                continue
            hook = f"blocks.{layer}.hook_resid_post"
            source = [activations_at(unlearned, hook, b) for b in batches]
            nll.append(float(edited_nll(target, batches, hook, functools.partial(_replace_by, source)).mean()))
        change = after[k] - base[k]
        out[f"{k}_nll"] = nll
        out[f"{k}_fraction"] = [(v - base[k]) / change if change != 0 else float("nan") for v in nll]
    out["steepest_layer"] = steepest_layer(layers, out["forget_fraction"])
    unlearned.train(was)
    return out


def first_changed_layer(target: Any, unlearned: Any) -> int:
    """The lowest decoder layer whose weights differ between the two models (0 when the embeddings differ or the
    models are not laid out alike; the number of layers when none differs)."""
    a, b = decoder_layers(target), decoder_layers(unlearned)
    names = {n for n, _ in target.named_parameters()}
    if len(a) != len(b) or names != {n for n, _ in unlearned.named_parameters()}:
        return 0
    inside = {id(p) for layer in a for p in layer.parameters()}
    other = dict(unlearned.named_parameters())
    if any(id(p) not in inside and not torch.equal(p, other[n]) for n, p in target.named_parameters()
           if "embed" in n):
        return 0
    for i, (x, y) in enumerate(zip(a, b)):
        if any(not torch.equal(p, q) for p, q in zip(x.parameters(), y.parameters())):
            return i
    return len(a)


def steepest_layer(layers: list[int], fraction: list[float]) -> int | None:
    """The layer whose patch adds the most to the forget fraction over the layer before it (the first
    layer's rise is its own fraction); None when no fraction is finite.

    Example:
        >>> steepest_layer([0, 1, 2, 3], [0.05, 0.1, 0.8, 1.0])
        2
    """
    rises = [f - (fraction[i - 1] if i else 0.0) for i, f in enumerate(fraction)]
    finite = [(r, -i) for i, r in enumerate(rises) if r == r]
    return layers[-max(finite)[1]] if finite else None
