"""`sae_clamp`: unlearning by conditional negative clamping of SAE features, at inference, saved with the model.

No weight changes. The method reads the target's activations at `clamp_hook_name` on the forget and retain rows
(every non-pad token but the first), encodes them with a ReLU SAE (`clamp_sae_path`, or one trained here on
those activations with sae-lens and cached by the target's weights), and chooses the features that fire on
forget tokens and almost never on retain ones (SAEBench's unlearning selection, Farrell et al.): among features
whose retain firing frequency is at most `clamp_retain_sparsity`, the `clamp_features` with the highest forget
firing frequency. Each chosen feature i is clamped where it fires to v_i = -`clamp_multiplier` x its mean
activation on the forget tokens where it fired (`sgu_llm.models.clamp`: the reconstruction error is kept; tokens
where none fires pass unchanged). The clamp is part of the model (a forward hook of the layer): evaluation and
the attacks (relearning fine-tunes the weights under it; quantization rounds them) see it, `save_model` writes
it beside the weights, and `sgu-llm eval` loads it back.

The trainer keeps the Trainer's interface: `train()` fires the callbacks' train start (the target scored as
epoch 0), attaches the clamp, then one epoch end (the clamped model scored as epoch 1), so per-epoch scoring and
the sweep's epoch selection treat it as a one-epoch method whose epoch 0 is the target.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import TrainOutput

from sgu_llm.core.cache import default_cache_dir, fingerprint, weights_fingerprint
from sgu_llm.models.clamp import SAEClamp, attach_clamp, save_clamp
from sgu_llm.models.hooks import HOOK_PATTERN
from sgu_llm.probe.sae import cached_sae, collect_activations, load_sae
from sgu_llm.trainers import UnlearnConfig, UnlearnTrainer, register_method


def select_clamp_features(
    forget_f: torch.Tensor, retain_f: torch.Tensor, k: int, retain_sparsity: float, multiplier: float
) -> dict[str, Any]:
    """The features to clamp and their values, from SAE activations on forget tokens (n_f, d_sae) and retain
    tokens (n_r, d_sae): among features firing on at most `retain_sparsity` of retain tokens and more often on
    forget tokens than on retain ones, the `k` most often firing on forget tokens; value = -multiplier x the mean
    activation where it fired on forget tokens.

    Example:
        >>> f = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]); r = torch.tensor([[0.0, 1.0, 0.0]])
        >>> select_clamp_features(f, r, k=2, retain_sparsity=0.0, multiplier=10)["features"]
        [0]
    """
    freq_f = (forget_f > 0).double().mean(0)
    freq_r = (retain_f > 0).double().mean(0)
    eligible = (freq_r <= retain_sparsity) & (freq_f > freq_r)
    score = torch.where(eligible, freq_f, torch.full_like(freq_f, -1.0))
    order = torch.argsort(score, descending=True, stable=True)
    chosen = [int(i) for i in order[: max(k, 0)] if score[i] > 0]
    fired = (forget_f > 0).double()
    mean_act = (forget_f.double() * fired).sum(0) / fired.sum(0).clamp_min(1)
    idx = torch.tensor(chosen, dtype=torch.long)
    return {
        "features": chosen,
        "values": (-multiplier * mean_act[idx]).float(),
        "forget_frequency": freq_f[idx].tolist(),
        "retain_frequency": freq_r[idx].tolist(),
        "eligible": int(eligible.sum()),
    }


@dataclass
class SAEClampConfig(UnlearnConfig):
    """SAE feature clamping (no training: `learning_rate` and the schedule are not used)."""

    clamp_hook_name: str = field(
        default="blocks.0.hook_resid_post",
        metadata={"help": "sae-lens hook name of the clamped activation: blocks.L.hook_resid_post (or hook_attn_out, "
                  "hook_mlp_out)."},
    )
    clamp_sae_path: str | None = field(
        default=None,
        metadata={"help": "A sae-lens SAE folder or release (with clamp_sae_id) at clamp_hook_name; None: train a ReLU "
                  "SAE on the target's activations on the forget and retain rows (cached by the target's weights)."},
    )
    clamp_sae_id: str | None = field(default=None, metadata={"help": "The SAE's id within a sae-lens release."})
    clamp_sae_expansion: int = field(default=4, metadata={"help": "d_sae / d_model of a trained SAE."})
    clamp_sae_l1_coefficient: float = field(
        default=3.0,
        metadata={"help": "L1 sparsity coefficient of a trained SAE: sparser than the probe's 0.6, at which no feature "
                  "fires on fewer than 1 % of retain tokens on the tiny model or SmolLM2 (so none could be chosen)."},
    )
    clamp_sae_epochs: int = field(default=10, metadata={"help": "Passes over the activations when training the SAE."})
    clamp_features: int = field(default=20, metadata={"help": "How many features to clamp (at most)."})
    clamp_multiplier: float = field(
        default=10.0,
        metadata={"help": "A chosen feature is clamped, where it fires, to -clamp_multiplier x its mean activation "
                  "on the forget tokens where it fired."},
    )
    clamp_retain_sparsity: float = field(
        default=0.01,
        metadata={"help": "A feature is eligible only if it fires on at most this fraction of retain tokens "
                  "(SAEBench uses 0.001-0.01)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if not HOOK_PATTERN.match(self.clamp_hook_name) or self.clamp_hook_name.endswith("resid_pre"):
            raise ValueError(f"clamp_hook_name must be blocks.L.hook_resid_post, hook_attn_out or hook_mlp_out (an "
                             f"output the clamp edits), got {self.clamp_hook_name!r}")
        if self.clamp_features < 1 or self.clamp_multiplier <= 0 or not 0 <= self.clamp_retain_sparsity < 1:
            raise ValueError(f"sae_clamp needs clamp_features >= 1 (got {self.clamp_features}), clamp_multiplier > 0 "
                             f"(got {self.clamp_multiplier}) and 0 <= clamp_retain_sparsity < 1 (got "
                             f"{self.clamp_retain_sparsity})")
        if self.stop_on_holdout:
            raise ValueError("sae_clamp trains nothing, so there is no epoch to stop at: set stop_on_holdout: false")
        if self.clamp_sae_epochs < 1 or self.clamp_sae_expansion < 1:
            raise ValueError(f"clamp_sae_epochs and clamp_sae_expansion must be >= 1, got {self.clamp_sae_epochs} "
                             f"and {self.clamp_sae_expansion}")


class SAEClampTrainer(UnlearnTrainer):
    """Chooses SAE features from forget-vs-retain firing and clamps them at an inference-time hook (module
    docstring). `train()` returns at once; the clamp is `self.clamp` and part of `self.model`."""

    config_class = SAEClampConfig
    trains_weights = False

    @classmethod
    def method_tag(cls) -> str:
        return "sae_clamp"

    def _sae(self, model: Any, acts: torch.Tensor) -> Any:
        """The SAE: the given one, or one trained on `acts` (cached by the model's weights and the settings)."""
        a = self.args
        if a.clamp_sae_path:
            return load_sae(a.clamp_sae_path, a.clamp_sae_id).eval()
        key = fingerprint({"weights": weights_fingerprint(model), "hook": a.clamp_hook_name, "rows": len(acts),
                           "expansion": a.clamp_sae_expansion, "l1": a.clamp_sae_l1_coefficient,
                           "epochs": a.clamp_sae_epochs, "seed": a.seed, "format": 1})[:16]
        sae, _ = cached_sae(os.path.join(default_cache_dir(), "clamp-saes", key), lambda: acts,
                            expansion=a.clamp_sae_expansion, l1_coefficient=a.clamp_sae_l1_coefficient,
                            epochs=a.clamp_sae_epochs, seed=a.seed, hook_name=a.clamp_hook_name)
        return sae

    def choose(self, model: Any) -> SAEClamp:
        """The clamp for `model` (the target): activations, SAE, selection, and a check that the clamp's encoder
        is the SAE's own on these activations."""
        a, pad = self.args, self.processing_class.pad_token_id
        rows = {split: getattr(self.train_dataset, split).to_list() for split in ("forget", "retain")}
        acts = {split: collect_activations(model, r, a.clamp_hook_name, pad)[0] for split, r in rows.items()}
        sae = self._sae(model, torch.cat([acts["forget"], acts["retain"]]))
        with torch.no_grad():
            codes = {split: sae.encode(x.to(sae.W_enc.dtype)).float() for split, x in acts.items()}
        chosen = select_clamp_features(codes["forget"], codes["retain"], a.clamp_features, a.clamp_retain_sparsity,
                                       a.clamp_multiplier)
        if not chosen["features"]:
            raise ValueError(
                f"sae_clamp found no SAE feature at {a.clamp_hook_name} that fires on forget tokens and on at most "
                f"{a.clamp_retain_sparsity} of retain tokens: raise clamp_retain_sparsity or use another hook"
            )
        info = {k: chosen[k] for k in ("forget_frequency", "retain_frequency", "eligible")}
        info.update(multiplier=a.clamp_multiplier, retain_sparsity=a.clamp_retain_sparsity)
        clamp = SAEClamp.from_sae(sae, a.clamp_hook_name, chosen["features"], chosen["values"], info)
        with torch.no_grad():
            mine = clamp.encode(acts["forget"])
            theirs = codes["forget"][:, chosen["features"]]
        err = float((mine - theirs).abs().max() / theirs.abs().max().clamp_min(1e-12))
        if err > 1e-3:
            raise ValueError(
                f"the SAE at {a.clamp_sae_path or 'the cache'} is not a plain ReLU SAE (its features differ from the "
                f"clamp's relu((x - b_dec) W_enc + b_enc) by {err:.2g} of their scale): sae_clamp supports sae-lens' "
                "standard architecture, saved for inference (normalisation folded in)"
            )
        return clamp

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> TrainOutput:
        start = time.perf_counter()
        args = self.args
        model = self.accelerator.unwrap_model(self.model)
        self.state = TrainerState(epoch=0.0, global_step=0, max_steps=0, num_train_epochs=1,
                                  is_world_process_zero=self.is_world_process_zero(),
                                  is_local_process_zero=self.is_local_process_zero())
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        self.clamp = self.choose(model)
        attach_clamp(model, self.clamp)
        self.state.epoch = 1.0
        self.control = self.callback_handler.on_epoch_end(args, self.state, self.control)
        info = self.clamp.info
        seconds = time.perf_counter() - start
        self.log({"clamp/features": float(len(self.clamp.features)), "clamp/eligible": float(info["eligible"]),
                  "clamp/forget_frequency": float(sum(info["forget_frequency"]) / len(self.clamp.features)),
                  "clamp/retain_frequency_max": float(max(info["retain_frequency"])),
                  "clamp/value_mean": float(self.clamp.values.mean()), "train_runtime": seconds})
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        return TrainOutput(0, 0.0, {"train_runtime": seconds})

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The model as `UnlearnTrainer` saves it, and its clamp beside it (`sae_clamp.safetensors` / `.json`)."""
        super().save_model(output_dir, _internal_call)
        if self.is_world_process_zero():
            save_clamp(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)


register_method("sae_clamp", SAEClampConfig, SAEClampTrainer)
