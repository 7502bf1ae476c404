"""SAE probe: track which sparse-autoencoder features SGU prunes or reverses, and check it causally; and the
`sae_clamp` method (registered here: it needs the SAE code)."""

from sgu_llm.models.hooks import capture, replace_activation, resolve_hook
from sgu_llm.probe.clamp import SAEClampConfig, SAEClampTrainer, select_clamp_features  # registers sae_clamp
from sgu_llm.probe.sae import cached_sae, collect_activations, load_sae, sae_quality, save_sae, train_sae
from sgu_llm.probe.sae_probe import ProbeArguments, SAEProbe, SAEProbeCallback, causal_check, encode_with_pre
from sgu_llm.probe.stats import STATES, FeatureStats, classify, feature_stats, select_forget_features

__all__ = [
    "STATES",
    "SAEClampConfig",
    "SAEClampTrainer",
    "FeatureStats",
    "ProbeArguments",
    "SAEProbe",
    "SAEProbeCallback",
    "cached_sae",
    "capture",
    "causal_check",
    "classify",
    "collect_activations",
    "encode_with_pre",
    "feature_stats",
    "load_sae",
    "replace_activation",
    "resolve_hook",
    "sae_quality",
    "save_sae",
    "select_clamp_features",
    "select_forget_features",
    "train_sae",
]
