"""The SAE probe: which features of a layer SGU prunes or reverses, and whether that story is causal.

`SAEProbe` measures per-feature statistics of fixed forget and retain probe
batches; `SAEProbeCallback` does so every `probe_every` optimizer steps during
unlearning and records SGU's action fractions for the parameter tensors that
feed the probed layer; `causal_check` clamps features through the SAE.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from sgu_llm.evaluation.prefix import FrozenPrefix
from sgu_llm.evaluation.scoring import score_rows
from sgu_llm.models.hooks import HOOK_PATTERN, replace_activation
from sgu_llm.probe.sae import collect_activations
from sgu_llm.probe.stats import STATES, FeatureStats, classify, feature_stats, select_forget_features


@dataclass
class ProbeArguments:
    """The SAE probe (on by default in `sgu-llm run`)."""

    probe: bool = field(
        default=True, metadata={"help": "Track SAE features during unlearning (sgu-llm run)."}
    )
    sae_path: str | None = field(
        default=None,
        metadata={
            "help": "A sae-lens SAE folder or release for the model; None trains one on the target model."
        },
    )
    sae_id: str | None = field(default=None, metadata={"help": "SAE id within a sae-lens release."})
    sae_hook_name: str = field(
        default="blocks.1.hook_resid_post",
        metadata={
            "help": "sae-lens hook name of the probed layer (blocks.L.hook_resid_pre|resid_post|attn_out|mlp_out)."
        },
    )
    sae_expansion: int = field(default=8, metadata={"help": "d_sae / d_model of a trained SAE."})
    sae_l1_coefficient: float = field(
        default=0.6, metadata={"help": "L1 sparsity coefficient of a trained SAE."}
    )
    sae_epochs: int = field(default=30, metadata={"help": "Passes over the captured activations."})
    probe_every: int = field(default=10, metadata={"help": "Probe every this many optimizer steps."})
    probe_examples: int = field(
        default=48, metadata={"help": "Fixed probe rows from each of forget and retain."}
    )
    select_percentile: float = field(
        default=90.0,
        metadata={"help": "Forget-specific features: forget/retain activation ratio above this percentile."},
    )
    prune_ratio: float = field(
        default=0.3, metadata={"help": "Pruned: forget activation below this fraction of its start."}
    )
    collateral_ratio: float = field(
        default=0.5,
        metadata={"help": "Collateral: retain activation moved by more than this fraction of its start."},
    )
    reverse_margin: float = field(
        default=0.5,
        metadata={
            "help": "Reversed: forget pre-activation (where it fired at the start) below -margin x its start."
        },
    )
    causal_random_draws: int = field(
        default=20,
        metadata={"help": "Random matched-frequency feature sets the causal check compares against (its spread)."},
    )
    causal_fallback_features: int = field(
        default=20,
        metadata={
            "help": "When no probed feature was pruned or reversed, the causal check clamps this many features "
            "whose forget activation fell most (the report says which set it clamped); 0 skips the check then."
        },
    )
    causal_scales: list[float] = field(
        default_factory=lambda: [0.0, -2.0],
        metadata={
            "help": "Factors the causal check multiplies the removed features by: 0 switches them off, a negative "
            "factor pushes them past zero."
        },
    )

    evidence: bool = field(
        default=False,
        metadata={
            "help": "After unlearning, find where it acts and which features carry it (docs/probe.md): the "
            "per-layer patching curve, features ranked by attribution at the layer where the curve rises most, "
            "and their causal test on held-out rows against matched random sets and a random-weights SAE."
        },
    )
    evidence_layers: list[int] | None = field(
        default=None,
        metadata={"help": "Decoder layers the evidence's SAE may sit at (its budget); None: every layer."},
    )
    evidence_ks: list[int] = field(
        default_factory=lambda: [5, 20, 50], metadata={"help": "How many top-ranked features the causal test edits."}
    )
    evidence_scales: list[float] = field(
        default_factory=lambda: [-2.0, -10.0, -50.0],
        metadata={"help": "Negative multiples the causal test clamps the selected features at."},
    )
    evidence_draws: int = field(
        default=99,
        metadata={"help": "Matched random feature sets the patch of the selected features is tested against (p-values "
                  "down to 1 / (draws + 1))."},
    )
    evidence_clamp_draws: int = field(
        default=19,
        metadata={"help": "Matched random sets for the clamps' selectivity p-values and for the random-weights SAE's "
                  "own p (at most evidence_draws are used; each costs a pass per clamp scale on forget and retain rows)."},
    )
    evidence_null: bool = field(
        default=True,
        metadata={
            "help": "Rank features net of a null: the target fine-tuned on retain rows only for as many steps as "
            "the unlearned model took (SGU's retain_only rule), so what any fine-tuning moves is not credited."
        },
    )

    def __post_init__(self):
        if self.evidence and not self.probe:
            raise ValueError("evidence: true needs probe: true (the evidence runs after the probe); set both")
        if self.evidence_clamp_draws < 0:
            raise ValueError(f"evidence_clamp_draws must be 0 or more, got {self.evidence_clamp_draws}")
        if self.evidence_draws < 0 or any(k < 1 for k in self.evidence_ks) or not self.evidence_ks:
            raise ValueError(
                f"evidence_ks must be positive counts and evidence_draws 0 or more, got {self.evidence_ks} and "
                f"{self.evidence_draws}"
            )
        if not self.evidence_scales or any(c >= 0 for c in self.evidence_scales):
            raise ValueError(f"evidence_scales must be negative multiples (e.g. [-2, -10]), got {self.evidence_scales}")
        if self.evidence_layers is not None and (not self.evidence_layers or min(self.evidence_layers) < 0):
            raise ValueError(f"evidence_layers must be decoder layer indices (0 or more), got {self.evidence_layers}")
        if not HOOK_PATTERN.match(self.sae_hook_name):
            raise ValueError(
                f"sae_hook_name {self.sae_hook_name!r} is not blocks.L.hook_resid_pre|resid_post|attn_out|mlp_out"
            )
        if self.probe_every < 1 or self.probe_examples < 1:
            raise ValueError("probe_every and probe_examples must be positive")
        if self.causal_fallback_features < 0:
            raise ValueError(f"causal_fallback_features must be 0 or more, got {self.causal_fallback_features}")
        if self.causal_random_draws < 2:
            raise ValueError(f"causal_random_draws must be at least 2 (a spread), got {self.causal_random_draws}")
        if not self.causal_scales or any(c >= 1 for c in self.causal_scales):
            raise ValueError(f"causal_scales must be a non-empty list of factors below 1, got {self.causal_scales}")
        if not 0 < self.select_percentile < 100:
            raise ValueError(f"select_percentile must be in (0, 100), got {self.select_percentile}")


def encode_with_pre(sae: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAE feature activations and their pre-activations (before the nonlinearity)."""
    x = x.to(sae.W_enc.device)
    pre = sae.process_sae_in(x) @ sae.W_enc + sae.b_enc
    return sae.encode(x), pre


def feeding_pattern(hook_name: str) -> re.Pattern:
    """Parameter names that feed the hooked activation: embeddings and the layers up to it."""
    m = HOOK_PATTERN.match(hook_name)
    layer, kind = int(m.group(1)), m.group(2)
    last = layer - 1 if kind == "resid_pre" else layer
    layers = "|".join(str(i) for i in range(last + 1)) or "NONE"
    return re.compile(rf"(embed_tokens|\.layers\.({layers})\.)")


class SAEProbe:
    """Feature statistics of fixed forget/retain probe rows over a run."""

    def __init__(
        self,
        sae: Any,
        hook_name: str,
        tokenizer: Any,
        forget_rows: list[dict],
        retain_rows: list[dict],
        args: ProbeArguments,
    ):
        self.sae, self.hook_name, self.tokenizer, self.args = sae, hook_name, tokenizer, args
        self.rows = {"forget": forget_rows, "retain": retain_rows}
        self.start_mask: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, Any]] = []  # one entry per probe: step and FeatureStats per set
        self.positions: dict[str, list[torch.Tensor]] = {}
        self.start_acts: torch.Tensor | None = None
        self.selected: torch.Tensor | None = None
        self.seconds = 0.0

    @torch.no_grad()
    def measure(self, model: Any, step: int) -> None:
        t = time.perf_counter()
        entry: dict[str, Any] = {"step": step}
        for name, rows in self.rows.items():
            x, pos = collect_activations(model, rows, self.hook_name, self.tokenizer.pad_token_id)
            acts, pre = encode_with_pre(self.sae, x)
            acts, pre = acts.float().cpu(), pre.float().cpu()
            if name not in self.start_mask:
                self.start_mask[name] = acts > 0
                self.positions[name] = pos
                if name == "forget":
                    self.start_acts = acts
            entry[name] = feature_stats(acts, pre, self.start_mask[name])
        if self.selected is None:
            self.selected = select_forget_features(
                entry["forget"], entry["retain"], self.args.select_percentile
            )
        self.history.append(entry)
        self.seconds += time.perf_counter() - t

    def states(self, index: int = -1) -> list[str]:
        """States of the selected features at probe `index` (default: the last)."""
        s0, now = self.history[0], self.history[index]
        sel = self.selected

        def pick(fs: FeatureStats) -> FeatureStats:
            return FeatureStats(fs.freq[sel], fs.mean_act[sel], fs.mean_pre[sel], fs.start_pre[sel])

        return classify(
            pick(s0["forget"]),
            pick(s0["retain"]),
            pick(now["forget"]),
            pick(now["retain"]),
            prune_ratio=self.args.prune_ratio,
            collateral_ratio=self.args.collateral_ratio,
            reverse_margin=self.args.reverse_margin,
        )

    def state_counts(self) -> list[dict[str, int]]:
        out = []
        for i, entry in enumerate(self.history):
            states = self.states(i)
            out.append({"step": entry["step"], **{s: states.count(s) for s in STATES}})
        return out

    def top_contexts(self, feature: int, k: int = 3, width: int = 4) -> list[str]:
        """The forget-set tokens where `feature` fired most at the start, with `width` tokens of context."""
        acts = self.start_acts[:, feature]
        top = torch.topk(acts, min(k, int((acts > 0).sum()))).indices.tolist()
        flat = [(r, p) for r, ps in enumerate(self.positions["forget"]) for p in ps.tolist()]
        return [token_context(self.tokenizer, self.rows["forget"][flat[i][0]]["input_ids"], flat[i][1], width)
                for i in top]

    def to_json(self) -> dict[str, Any]:
        sel = self.selected.tolist()
        final = self.states()
        features = []
        for j, f in enumerate(sel):
            features.append(
                {
                    "feature": f,
                    "state": final[j],
                    "steps": [
                        {
                            "step": e["step"],
                            "forget_freq": e["forget"].freq[f].item(),
                            "forget_mean_act": e["forget"].mean_act[f].item(),
                            "forget_mean_pre": e["forget"].mean_pre[f].item(),
                            "forget_start_pre": e["forget"].start_pre[f].item(),
                            "retain_freq": e["retain"].freq[f].item(),
                            "retain_mean_act": e["retain"].mean_act[f].item(),
                            "retain_mean_pre": e["retain"].mean_pre[f].item(),
                        }
                        for e in self.history
                    ],
                }
            )
        return {
            "hook_name": self.hook_name,
            "selected": sel,
            "features": features,
            "state_counts": self.state_counts(),
            "probe_seconds": self.seconds,
        }


class SAEProbeCallback(TrainerCallback):
    """Runs an `SAEProbe` during training and records SGU's actions on the tensors feeding the probed layer.

    Attach with `probe_callback.attach(trainer)`, which also subscribes to
    `SGUTrainer.selection_observers` when the trainer has them.
    """

    def __init__(self, probe: SAEProbe, every: int):
        self.probe, self.every = probe, every
        self.pattern = feeding_pattern(probe.hook_name)
        self.actions: list[dict[str, Any]] = []  # step -> {tensor name: [prune, maintain, reverse] fractions}
        self.train_seconds = 0.0
        self._t0 = 0.0

    def attach(self, trainer: Any) -> SAEProbeCallback:
        trainer.add_callback(self)
        if hasattr(trainer, "selection_observers"):
            trainer.selection_observers.append(self.observe)
        return self

    def observe(self, step: int, names: list[str], counts: torch.Tensor) -> None:
        keep = [i for i, n in enumerate(names) if self.pattern.search(n)]
        if not keep:
            return
        c = counts[keep].double()
        frac = (c / c.sum(1, keepdim=True).clamp_min(1)).tolist()
        self.actions.append({"step": step + 1, "tensors": {names[i]: f for i, f in zip(keep, frac)}})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._t0 = time.perf_counter()
        if state.is_world_process_zero:
            self.probe.measure(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and state.global_step % self.every == 0:
            self.probe.measure(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and self.probe.history[-1]["step"] != state.global_step:
            self.probe.measure(model, state.global_step)
        self.train_seconds = time.perf_counter() - self._t0


@torch.no_grad()
def answer_scores(model: Any, rows: list[dict], pad_token_id: int) -> tuple[float, float]:
    """(mean probability exp(-NLL), mean answer NLL) over tokenised rows."""
    mean_nll = torch.from_numpy(score_rows(model, rows, pad_token_id)["nll"])
    return (-mean_nll).exp().mean().item(), mean_nll.mean().item()


def answer_probability(model: Any, rows: list[dict], pad_token_id: int) -> float:
    """Mean exp(-mean answer NLL) over tokenised rows."""
    return answer_scores(model, rows, pad_token_id)[0]


def _nearest(values: np.ndarray, target: float, taken: np.ndarray, k: int) -> list[int]:
    """Indices of the `k` values closest to `target` among those not `taken`, ties in index order
    (what a stable sort by distance gives), in linear time."""
    dist = np.abs(values - target)
    dist[taken] = np.inf
    k = min(k, int((~taken).sum()))
    kth = np.partition(dist, k - 1)[k - 1]
    closer = np.flatnonzero(dist < kth)
    ties = np.flatnonzero(dist == kth)[: k - len(closer)]
    return sorted(np.concatenate([closer, ties]).tolist(), key=lambda i: (dist[i], i))


def matched_random_sets(
    features: list[int], freq: torch.Tensor, pool: Any, draws: int, seed: int
) -> list[list[int]]:
    """`draws` random feature sets, each swapping every feature of `features` for one of the 5 features of `pool`
    (not yet in the set) nearest in firing frequency `freq`, drawn at random."""
    pool = np.asarray(pool, dtype=np.int64)
    f = freq.double().cpu().numpy()
    pool_freq = f[pool]
    rng = random.Random(seed)
    out = []
    for _ in range(draws):
        taken = np.zeros(len(pool), dtype=bool)
        for feat in features:
            taken[rng.choice(_nearest(pool_freq, float(f[feat]), taken, 5))] = True
        out.append(sorted(pool[taken].tolist()))
    return out


def token_context(tokenizer: Any, ids: list[int], p: int, width: int) -> str:
    """Token `p` of `ids` in brackets with `width` tokens either side."""

    def text(span: list[int]) -> str:
        return tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens(span))

    return f"…{text(ids[max(0, p - width):p])} [{text([ids[p]]).strip()}] {text(ids[p + 1:p + 1 + width])}…".replace(
        "\n", " ⏎ ")


def _effects(base: dict[str, float], r: dict[str, float]) -> dict[str, float]:
    """Drops in probability, rises in NLL and the selectivity (forget NLL rise - retain NLL rise)."""
    out = {
        "forget_drop": base["forget_prob"] - r["forget_prob"],
        "retain_drop": base["retain_prob"] - r["retain_prob"],
        # Probabilities saturate near 1 on memorised data; the NLL rise shows smaller effects.
        "forget_nll_rise": r["forget_nll"] - base["forget_nll"],
        "retain_nll_rise": r["retain_nll"] - base["retain_nll"],
    }
    out["selectivity"] = out["forget_nll_rise"] - out["retain_nll_rise"]
    return out


@torch.no_grad()
def causal_check(
    model: Any,
    sae: Any,
    hook_name: str,
    pad_token_id: int,
    forget_rows: list[dict],
    retain_rows: list[dict],
    features: list[int],
    freq: torch.Tensor,
    exclude: list[int] | None = None,
    draws: int = 5,
    seed: int = 0,
    scales: tuple[float, ...] = (0.0,),
) -> dict[str, Any]:
    """Forget/retain scores with `features` clamped through the SAE, against matched random feature sets.

    The activation is replaced by decode(f') + (x - decode(encode(x))): the SAE's reconstruction with
    the clamped features plus its error term, so with nothing clamped the model is unchanged. Clamping
    multiplies the features by each of `scales`: 0 switches them off, a negative scale pushes them
    past zero (the SAE-unlearning literature finds zeroing often does little where a negative value
    does). Each of `draws` random sets matches the firing frequency of every clamped feature (one of
    the 5 nearest-frequency unselected features, drawn at random).

    Selectivity is the forget NLL rise minus the retain NLL rise. Per scale, `by_scale[str(scale)]`
    holds the clamped set's effects, every random draw's effects, their mean, spread (std, min, max)
    and `random_at_least` (the fraction of draws whose selectivity reaches the clamped set's: an
    empirical p-value). The top-level `clamped*` / `random*` keys are the first scale's.
    """
    was_training = model.training
    model.eval()

    def run(clamp: list[int], scale: float) -> dict[str, float]:
        idx = torch.tensor(clamp, dtype=torch.long)

        def fn(x: torch.Tensor) -> torch.Tensor:
            f = sae.encode(x.to(sae.W_enc.dtype))
            err = x - sae.decode(f).to(x.dtype)
            f = f.clone()
            f[..., idx] = f[..., idx] * scale
            return sae.decode(f).to(x.dtype) + err

        with replace_activation(model, hook_name, fn):
            fp, fnll = answer_scores(model, forget_rows, pad_token_id)
            rp, rnll = answer_scores(model, retain_rows, pad_token_id)
        return {"forget_prob": fp, "retain_prob": rp, "forget_nll": fnll, "retain_nll": rnll}

    # Every pass runs the same rows through the same layers below the hook: record their output once and run
    # only the layers from the hooked one up (exact; sgu_llm.evaluation.prefix).
    prefix = FrozenPrefix()
    hook_layer = int(HOOK_PATTERN.match(hook_name).group(1))
    with prefix.active(model, layer=hook_layer):
        result = _causal_passes(run, features, freq, exclude, draws, seed, scales)
    model.train(was_training)
    return result


def _causal_passes(
    run: Any, features: list[int], freq: torch.Tensor, exclude: list[int] | None, draws: int, seed: int, scales: tuple
) -> dict[str, Any]:
    """The clamped and random passes of `causal_check` (its docstring)."""
    base = run([], 1.0)
    result: dict[str, Any] = {"n_features": len(features), "baseline": base, "scales": list(scales)}
    if features:
        banned = set(features) | set(exclude or [])
        pool = [i for i in torch.argsort(freq).tolist() if i not in banned]
        random_sets = matched_random_sets(features, freq, pool, draws, seed)
        by_scale = {}
        for scale in scales:
            clamped = run(features, scale)
            randoms = [run(r, scale) for r in random_sets]
            mine = _effects(base, clamped)
            theirs = [_effects(base, r) for r in randoms]
            sel = np.array([t["selectivity"] for t in theirs])
            by_scale[str(scale)] = {
                "clamped": clamped,
                "clamped_effects": mine,
                "random_effects": theirs,
                "random_mean": {k: float(np.mean([t[k] for t in theirs])) for k in mine},
                "random_selectivity_std": float(sel.std(ddof=1)) if len(sel) > 1 else float("nan"),
                "random_selectivity_min": float(sel.min()),
                "random_selectivity_max": float(sel.max()),
                "random_at_least": float(np.mean(sel >= mine["selectivity"])),
                "random": {k: float(np.mean([r[k] for r in randoms])) for k in base},
            }
        first = by_scale[str(scales[0])]
        result["by_scale"] = by_scale
        result["clamped"], result["random"] = first["clamped"], first["random"]
        for name, eff in (("clamped", first["clamped_effects"]), ("random", first["random_mean"])):
            for k, v in eff.items():
                result[f"{name}_{k}"] = v
    return result
