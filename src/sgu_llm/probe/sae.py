"""Train, save, load and score sparse autoencoders with sae-lens, offline.

Training uses sae-lens' own `SAETrainer` fed by an iterator over activations
captured with a forward hook on the HF model (no TransformerLens model needed).
The result is saved in sae-lens' format and loads with `SAE.load_from_disk`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import torch

from sgu_llm.core.files import atomic_dir, locked, write_json
from sgu_llm.data.pairing import pad_batch
from sgu_llm.models.hooks import capture, run_until_hook


@torch.no_grad()
def collect_activations(
    model: Any,
    rows: list[dict],
    hook_name: str,
    pad_token_id: int,
    batch_size: int = 128,
    skip_first: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Activations at `hook_name` for tokenised rows.

    Returns the (tokens, d) matrix of every non-pad token (without position 0,
    the BOS "attention sink" whose norm dwarfs the rest, when `skip_first`) and,
    per row, the index of each kept token in that row, for showing contexts.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out, positions = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = pad_batch(chunk, pad_token_id)
        with capture(model, hook_name, stop=True) as store:
            run_until_hook(
                model,
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            )
        acts = store[0].float().cpu()
        mask = batch["attention_mask"].bool()
        if skip_first:
            mask[:, 0] = False
        out.append(acts[mask])
        positions += [torch.nonzero(m).flatten() for m in mask]
    model.train(was_training)
    return torch.cat(out), positions


def sae_quality(sae: Any, acts: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """Explained variance, mean L0 and the dead-feature fraction of `sae` on `acts`."""
    sq_err = torch.zeros(())
    l0 = torch.zeros(())
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    with torch.no_grad():
        for start in range(0, len(acts), batch_size):
            x = acts[start : start + batch_size].to(sae.W_dec.device, sae.W_dec.dtype)
            f = sae.encode(x)
            sq_err += ((x - sae.decode(f)) ** 2).sum().cpu()
            l0 += (f > 0).sum().cpu()
            fired |= (f > 0).any(0).cpu()
    total_var = ((acts - acts.mean(0)) ** 2).sum()
    return {
        "explained_variance": float(1 - sq_err / total_var),
        "l0": float(l0 / len(acts)),
        "dead_fraction": float((~fired).float().mean()),
        "d_sae": int(sae.cfg.d_sae),
        "tokens": int(len(acts)),
    }


def train_sae(
    acts: torch.Tensor,
    *,
    expansion: int = 4,
    l1_coefficient: float = 1.0,
    epochs: int = 30,
    batch_size: int = 512,
    lr: float = 1e-3,
    seed: int = 0,
    hook_name: str = "blocks.0.hook_resid_post",
    model_name: str = "sgu-llm-target",
) -> Any:
    """A ReLU (standard) SAE trained with sae-lens' SAETrainer on an activation matrix (tokens, d)."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(seed)
    d = acts.shape[1]
    cfg = StandardTrainingSAEConfig(
        d_in=d,
        d_sae=expansion * d,
        l1_coefficient=l1_coefficient,
        normalize_activations="expected_average_only_in",
        metadata=SAEMetadata(hook_name=hook_name, model_name=model_name),
    )
    sae = StandardTrainingSAE(cfg)
    n = len(acts)
    batch_size = min(batch_size, n)

    def provider():
        gen = torch.Generator().manual_seed(seed)
        while True:
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n - batch_size + 1, batch_size):
                yield acts[perm[i : i + batch_size]]

    trainer_cfg = SAETrainerConfig(
        total_training_samples=n * epochs,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr / 10,
        lr_scheduler_name="cosineannealing",
        n_batches_for_norm_estimate=min(50, max(1, n // batch_size)),
        dead_feature_window=200,
        feature_sampling_window=400,
    )
    return SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=provider()).fit()


def save_sae(sae: Any, path: str) -> str:
    """Save in sae-lens' inference format (`cfg.json` + `sae_weights.safetensors`)."""
    os.makedirs(path, exist_ok=True)
    if hasattr(sae, "save_inference_model"):
        sae.save_inference_model(path)
    else:
        sae.save_model(path)
    return path


def load_sae(path_or_release: str, sae_id: str | None = None, device: str = "cpu") -> Any:
    """A local sae-lens folder, or a published release (`SAE.from_pretrained(release, sae_id)`)."""
    from sae_lens import SAE

    if os.path.isdir(path_or_release):
        return SAE.load_from_disk(path_or_release, device=device)
    if sae_id is None:
        raise ValueError(f"{path_or_release!r} is not a folder; for a sae-lens release also give sae_id")
    return SAE.from_pretrained(path_or_release, sae_id, device=device)


def cached_sae(path: str, activations: Callable[[], torch.Tensor], **train_args: Any) -> tuple[Any, dict[str, float]]:
    """The SAE kept at `path` with its quality on the activations it was trained on, trained there first
    (`train_sae(activations(), **train_args)`) when missing: the key in `path` must name everything that shapes
    it. Built once under a lock and moved in whole, so concurrent runs share one; a cached call runs no forward
    (a folder written before its quality was kept beside it gets it measured now). Returns `(sae, quality)`."""
    quality_file = os.path.join(path, "quality.json")
    parent, name = os.path.split(os.path.normpath(path))
    with locked(os.path.join(os.path.dirname(parent), "locks", f"{os.path.basename(parent)}-{name}.lock")):
        if not os.path.exists(os.path.join(path, "cfg.json")):
            acts = activations()
            sae = train_sae(acts, **train_args).eval()
            quality = sae_quality(sae, acts)

            def save(folder: str) -> None:
                save_sae(sae, folder)
                write_json(os.path.join(folder, "quality.json"), quality)

            atomic_dir(path, save)
        elif not os.path.exists(quality_file):
            write_json(quality_file, sae_quality(load_sae(path).eval(), activations()))
    with open(quality_file) as fh:
        quality = json.load(fh)
    # loaded through sae-lens' own loader, as a published SAE would be
    return load_sae(path).eval(), quality
