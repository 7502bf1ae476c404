"""Which SAE features carry the unlearning, and whether they cause it, against two controls.

At one hook point, with f = SAE.encode(x) of the target and f_u of the unlearned model on the same inputs:

- **Attribution** of feature i: the change f_u - f times the gradient of the answer NLL with respect to f
  (through x + decode(f) - decode(f_t), which is x itself, so the gradient is the model's own), summed over
  the row's positions and averaged over rows: A_i = mean_rows sum_pos (f_u - f)_i dNLL/df_i, the first-order
  share of the NLL change that feature i's move explains. A target that knows its forget answers sits where
  that gradient is near zero (answer NLL ~0.003 on the tiny model), so the causal test averages the gradient
  along the path from f to f_u (integrated gradients, `path_steps` midpoints). Features are ranked by A on forget rows minus A on
  retain rows (what moved the forget answers and not the retain ones).
- **The causal test** on rows not used to rank: patch the k top features of the target to their unlearned
  values, x' = x + decode(f') - decode(f) with f'_S = f_u,S (the rest, the SAE's reconstruction error
  included, stays the target's), and report the forget NLL rise as a fraction of the whole-layer patch's
  (x' = x_u at the same positions), the retain rise as a fraction of the forget rise (the side effect), and an
  empirical p against matched random feature sets (each feature swapped for one of the five unselected
  features of nearest firing frequency): p = (1 + #{random fraction >= selected}) / (1 + draws). Clamping
  the same features at negative multiples of their activation (f'_S = c f_S, c < 0) is scored the same way.
- **Controls**: the same ranking and test through an SAE of the same shape with random weights
  (`random_weights_sae`: random encoder and decoder directions at the trained norms, the trained biases), so
  a result that any basis would give is not credited to the SAE's features; and the error-term check: the
  patch's effect with the reconstruction error kept (x' above) against the same edit applied to the pure
  reconstruction (decode(f') against decode(f)), so an effect the error term undoes (or adds) shows.

Every position of a row but the first (the attention sink, whose activation dwarfs the rest and which no SAE
here is trained on) takes part, in the feature edits and the whole-layer patch alike.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import numpy as np
import torch

from sgu_llm.evaluation.prefix import FrozenPrefix
from sgu_llm.models.hooks import HOOK_PATTERN, replace_activation
from sgu_llm.probe.patching import _inputs, activations_at, edited_nll, padded_batches
from sgu_llm.probe.sae import collect_activations
from sgu_llm.probe.sae_probe import encode_with_pre, matched_random_sets, token_context
from sgu_llm.probe.stats import classify, feature_stats


def _positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(rows, length, 1) mask of the positions that take part: not padding, not the first."""
    mask = batch["attention_mask"].bool().clone()
    mask[:, 0] = False
    return mask.unsqueeze(-1)


def _encode(sae: Any, x: torch.Tensor) -> torch.Tensor:
    return sae.encode(x.to(sae.W_enc.dtype))


def _decode(sae: Any, f: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sae.decode(f).to(like.dtype)


def _row_nll_with_grad(model: Any, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Per-row mean answer NLL (labels != -100, shifted), differentiable."""
    logits = model(**inputs).logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    tgt = labels[:, 1:].to(logits.device)
    valid = tgt.ne(-100)
    logp = torch.log_softmax(logits, -1).gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return -(logp * valid).sum(-1) / valid.sum(-1).clamp_min(1)


def _through_features(sae: Any, f: torch.Tensor, f_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x + decode(f) - decode(f_t): equal to x where f = f_t, and carries the gradient to f."""
    return x + _decode(sae, f, x) - _decode(sae, f_t, x)


def feature_attribution(
    target: Any,
    unlearned: Any,
    sae: Any,
    hook_name: str,
    rows: list[dict],
    pad_token_id: int,
    batch_size: int = 16,
    path_steps: int = 1,
) -> torch.Tensor:
    """A_i = mean over rows of sum over positions of (f_u - f)_i dNLL/df_i (module docstring): a (d_sae,) float64
    tensor. With `path_steps` 1 the gradient is the target's (attribution patching); with m > 1 it is averaged at
    the midpoints f + (j + 1/2)/m (f_u - f) of the path to the unlearned features (integrated gradients), so the
    attributions add up to the NLL change of patching every feature (completeness) even where the target is
    saturated and its own gradient is near zero."""
    if path_steps < 1:
        raise ValueError(f"path_steps must be 1 or more, got {path_steps}")
    alphas = [0.0] if path_steps == 1 else [(j + 0.5) / path_steps for j in range(path_steps)]
    was = target.training, unlearned.training
    target.eval(), unlearned.eval()
    total = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    for batch in padded_batches(rows, pad_token_id, batch_size):
        mask = _positions(batch)
        x_t = activations_at(target, hook_name, batch)
        with torch.no_grad():
            f_t = _encode(sae, x_t)
            delta = (_encode(sae, activations_at(unlearned, hook_name, batch)) - f_t) * mask.to(f_t.device)
        grads = torch.zeros_like(delta, dtype=torch.float64)
        for alpha in alphas:
            f = (f_t + alpha * delta).requires_grad_(True)
            through = functools.partial(_through_features, sae, f, f_t)
            with torch.enable_grad(), replace_activation(target, hook_name, through):
                nll = _row_nll_with_grad(target, _inputs(target, batch), batch["labels"])
                (grad,) = torch.autograd.grad(nll.sum(), f)
            grads += grad.double()
        total += (delta.double() * grads / len(alphas)).sum((0, 1)).cpu()
    target.train(was[0]), unlearned.train(was[1])
    return total / max(len(rows), 1)


def random_weights_sae(sae: Any, seed: int = 0) -> Any:
    """An SAE of `sae`'s class, shape and configuration whose encoder and decoder directions are random
    (Gaussian, each scaled to the trained one's norm); the biases are the trained ones."""
    out = copy.deepcopy(sae)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, dim in (("W_enc", 0), ("W_dec", 1)):
            w = getattr(out, name)
            r = torch.randn(w.shape, generator=gen, dtype=torch.float64)
            r = r / r.norm(dim=dim, keepdim=True) * w.double().norm(dim=dim, keepdim=True)
            w.copy_(r.to(w.dtype))
    return out


class _Edits:
    """Per-batch target-side inputs of the edits: the unlearned activation and its SAE code, the mask."""

    def __init__(self, target: Any, unlearned: Any, sae: Any, hook_name: str, batches: list[dict]):
        self.sae, self.batches = sae, batches
        self.x_u = [activations_at(unlearned, hook_name, b) for b in batches]
        self.f_u = [_encode(sae, x) for x in self.x_u]
        self.mask = [_positions(b) for b in batches]

    def layer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        m = self.mask[i].to(x.device)
        return torch.where(m, self.x_u[i].to(x.dtype), x)

    def features(self, idx: list[int], scale: float | None = None, keep_error: bool = True):
        """The edit patching features `idx` to the unlearned values (scale None) or clamping them at
        `scale` times their activation; `keep_error` False edits the pure reconstruction instead."""
        sel = torch.tensor(idx, dtype=torch.long)

        def edit(i: int, x: torch.Tensor) -> torch.Tensor:
            f = _encode(self.sae, x)
            g = f.clone()
            g[..., sel] = self.f_u[i][..., sel] if scale is None else f[..., sel] * scale
            m = self.mask[i].to(x.device)
            base = x if keep_error else _decode(self.sae, f, x)
            return torch.where(m, base + _decode(self.sae, g, x) - _decode(self.sae, f, x), x)

        return edit


@torch.no_grad()
def causal_test(
    target: Any,
    unlearned: Any,
    sae: Any,
    hook_name: str,
    select_rows: dict[str, list[dict]],
    test_rows: dict[str, list[dict]],
    pad_token_id: int,
    ks: tuple[int, ...] = (5, 20, 50),
    scales: tuple[float, ...] = (-2.0, -10.0, -50.0),
    draws: int = 99,
    seed: int = 0,
    batch_size: int = 32,
    null: Any | None = None,
    path_steps: int = 8,
    clamp_draws: int | None = None,
) -> dict[str, Any]:
    """Rank features by net attribution on `select_rows` (`forget` / `retain` lists of tokenised rows), then on
    `test_rows` patch and clamp the top k against `draws` matched random sets (module docstring).

    With `null` (a model fine-tuned from the target as long, on retain rows only), each feature's net attribution
    of the target -> null change is subtracted before ranking, so a feature that moves under any fine-tuning is
    not ranked as an unlearning feature; `null_overlap` per k is the share of the top k by the plain net
    attribution that are also in the null's top k. The clamps are compared with the first `clamp_draws` random
    sets (default: all `draws`).

    Returns the whole-layer patch's NLL rises, the ranking (`net_attribution`, `ranked`), and per k: the
    features, `fraction_of_layer_patch`, `retain_side_effect` (retain rise / forget rise), `p_random`, the
    random sets' fractions (mean, max), the clamps per scale (forget and retain rises, selectivity and its p),
    and `error_term` (the patch's forget rise with the error term kept, and on the pure reconstruction net of the
    reconstruction's own rise, `reconstruction_alone_forget_rise`: if the error term undid the edit, the two
    would differ)."""
    with torch.enable_grad():
        attr = {k: feature_attribution(target, unlearned, sae, hook_name, rows, pad_token_id, path_steps=path_steps)
                for k, rows in select_rows.items()}
        null_attr = ({k: feature_attribution(target, null, sae, hook_name, rows, pad_token_id, path_steps=path_steps)
                      for k, rows in select_rows.items()} if null is not None else None)
    net = attr["forget"] - attr["retain"]
    null_net = null_attr["forget"] - null_attr["retain"] if null_attr is not None else torch.zeros_like(net)
    ranked = torch.argsort(net - null_net, descending=True).tolist()
    plain_order = torch.argsort(net, descending=True).tolist()
    null_order = torch.argsort(null_net, descending=True).tolist()
    batches = {k: padded_batches(rows, pad_token_id, batch_size) for k, rows in test_rows.items()}
    hook_layer = int(HOOK_PATTERN.match(hook_name).group(1))
    prefixes = {k: FrozenPrefix() for k in batches}
    edits = {k: _Edits(target, unlearned, sae, hook_name, b) for k, b in batches.items()}
    # firing frequency on the test rows of both sets, for the matched random sets
    fired = []
    for k, bs in batches.items():
        for b, m in zip(bs, edits[k].mask):
            fired.append((_encode(sae, activations_at(target, hook_name, b)) > 0)[m.squeeze(-1)].double())
    freq = torch.cat(fired).mean(0)

    was = target.training
    target.eval()
    base = {}
    for k in batches:  # the plain target; this pass also records the frozen part's output, before any edit hook
        with prefixes[k].active(target, layer=hook_layer):
            base[k] = float(edited_nll(target, batches[k]).mean())
    whole = {}
    for k in batches:
        with prefixes[k].active(target, layer=hook_layer):
            whole[k] = float(edited_nll(target, batches[k], hook_name, edits[k].layer).mean()) - base[k]

    def effect(idx: list[int], scale: float | None = None, keep_error: bool = True) -> dict[str, float]:
        out = {}
        for k, b in batches.items():
            with prefixes[k].active(target, layer=hook_layer):
                out[k] = float(edited_nll(target, b, hook_name, edits[k].features(idx, scale, keep_error)).mean())
            out[k] -= base[k]
        return out

    def summary(e: dict[str, float]) -> dict[str, float]:
        return {
            "forget_rise": e["forget"],
            "retain_rise": e["retain"],
            "fraction_of_layer_patch": e["forget"] / whole["forget"] if whole["forget"] else float("nan"),
            "retain_side_effect": e["retain"] / e["forget"] if e["forget"] else float("nan"),
            "selectivity": e["forget"] - e["retain"],
        }

    def p_at_least(mine: float, theirs: list[float]) -> float:
        return (1 + sum(t >= mine for t in theirs)) / (1 + len(theirs))

    # the pure reconstruction alone (nothing patched): its rise is the SAE's own error, which the error-term check
    # subtracts so that it measures the features' patch seen through the reconstruction
    recon = effect([], keep_error=False)
    by_k = {}
    for k in ks:
        top = ranked[: min(k, len(ranked))]
        pool = [i for i in range(len(freq)) if i not in set(top)]
        randoms = matched_random_sets(top, freq, pool, draws, seed + k) if draws else []
        mine = summary(effect(top))
        theirs = [summary(effect(r)) for r in randoms]
        frac = [t["fraction_of_layer_patch"] for t in theirs]
        clamps = {}
        for scale in scales:
            c = summary(effect(top, scale))
            rc = [summary(effect(r, scale))["selectivity"] for r in randoms[:clamp_draws]]
            clamps[str(scale)] = {**c, "p_random": p_at_least(c["selectivity"], rc) if rc else float("nan"),
                                  "random_selectivity_mean": float(np.mean(rc)) if rc else float("nan")}
        pure = effect(top, keep_error=False)
        by_k[str(k)] = {
            "features": top,
            "null_overlap": (len(set(plain_order[:k]) & set(null_order[:k])) / max(min(k, len(ranked)), 1)
                             if null_attr is not None else float("nan")),
            **mine,
            "p_random": p_at_least(mine["fraction_of_layer_patch"], frac) if frac else float("nan"),
            "random_fraction_mean": float(np.mean(frac)) if frac else float("nan"),
            "random_fraction_max": float(np.max(frac)) if frac else float("nan"),
            "clamp": clamps,
            "error_term": {"with_error_forget_rise": mine["forget_rise"],
                           "reconstruction_forget_rise": pure["forget"] - recon["forget"],
                           "reconstruction_alone_forget_rise": recon["forget"]},
        }
    target.train(was)
    return {
        "hook_name": hook_name,
        "draws": draws,
        "clamp_draws": len(randoms[:clamp_draws]) if ks else 0,
        "select_rows": {k: len(v) for k, v in select_rows.items()},
        "test_rows": {k: len(v) for k, v in test_rows.items()},
        "target_nll": base,
        "layer_patch_rise": whole,
        "net_attribution": net.tolist(),
        "null_net_attribution": null_net.tolist() if null_attr is not None else None,
        "attribution": {k: v.tolist() for k, v in attr.items()},
        "ranked": ranked[: max(ks)],
        "by_k": by_k,
    }


@torch.no_grad()
def feature_cards(
    target: Any,
    unlearned: Any,
    sae: Any,
    hook_name: str,
    rows: dict[str, list[dict]],
    tokenizer: Any,
    features: list[int],
    *,
    null: Any | None = None,
    contexts: int = 3,
    width: int = 4,
) -> list[dict[str, Any]]:
    """Per feature: its mean activation on the `forget` and `retain` rows in the target, the unlearned model (and
    the null), its state from target to unlearned (and to the null) as the probe classifies it
    (`sgu_llm.probe.stats.classify`), and the target's top `contexts` tokens on each set."""
    enc = {}
    models = {"target": target, "unlearned": unlearned, **({"null": null} if null is not None else {})}
    for name, model in models.items():
        for k, rs in rows.items():
            acts, positions = collect_activations(model, rs, hook_name, tokenizer.pad_token_id)
            f, pre = encode_with_pre(sae, acts.to(sae.W_enc.dtype))
            enc[name, k] = (f.float().cpu(), pre.float().cpu(), positions)
    start = {k: feature_stats(enc["target", k][0], enc["target", k][1]) for k in rows}
    fired = {k: enc["target", k][0] > 0 for k in rows}
    states = {}
    for name in models:
        if name == "target":
            continue
        now = {k: feature_stats(enc[name, k][0], enc[name, k][1], fired[k]) for k in rows}
        states[name] = classify(start["forget"], start["retain"], now["forget"], now["retain"])
    cards = []
    for f in features:
        card: dict[str, Any] = {"feature": int(f)}
        for name in models:
            card[f"{name}_act"] = {k: float(enc[name, k][0][:, f].mean()) for k in rows}
        for name, st in states.items():
            card["state" if name == "unlearned" else f"{name}_state"] = st[f]
        for k, rs in rows.items():
            acts, _, positions = enc["target", k]
            flat = [(r, p) for r, ps in enumerate(positions) for p in ps.tolist()]
            col = acts[:, f]
            top = torch.topk(col, min(contexts, int((col > 0).sum()))).indices.tolist()
            card[f"{k}_contexts"] = [token_context(tokenizer, rs[flat[i][0]]["input_ids"], flat[i][1], width) for i in top]
        cards.append(card)
    return cards
