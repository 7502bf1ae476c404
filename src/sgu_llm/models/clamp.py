"""An SAE clamp: conditional negative clamping of chosen SAE features at one hook, as part of the model.

The clamp holds only the chosen features' slice of a ReLU SAE (their encoder columns and biases, their decoder
rows, the decoder bias) and edits the activation x at its hook where a chosen feature fires:

    f_i = relu((x - b_dec) . W_enc[:, i] + b_enc[i])          (the SAE's own encoder, for the chosen i only)
    x'  = x + sum_i [f_i > 0] (v_i - f_i) W_dec[i]             (v_i < 0: the clamp value)

so a token where none of them fires passes unchanged, and the SAE's reconstruction error is kept. It is a
forward hook of the layer (an `SAEClamp` module, registered as the layer's `sae_clamp` child so `.to()` and
`copy.deepcopy` carry it); its tensors are non-persistent buffers, outside `state_dict`, so `save_pretrained`
writes the model as it was and `save_clamp` writes the clamp beside it (`sae_clamp.safetensors`,
`sae_clamp.json`); `sgu_llm.models.saved.load_saved_model` puts it back.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sgu_llm.core.files import write_json
from sgu_llm.models.hooks import resolve_hook

CLAMP_WEIGHTS = "sae_clamp.safetensors"
CLAMP_CONFIG = "sae_clamp.json"
_BUFFERS = ("w_enc", "b_enc", "b_dec", "w_dec", "values")


class SAEClamp(torch.nn.Module):
    """The chosen features' slice of an SAE and their clamp values; called as a forward hook
    (`hook(module, args, output)`) it returns the edited output."""

    def __init__(self, hook_name: str, features: list[int], w_enc: torch.Tensor, b_enc: torch.Tensor,
                 b_dec: torch.Tensor, w_dec: torch.Tensor, values: torch.Tensor, info: dict | None = None):
        super().__init__()
        k = len(features)
        if w_enc.shape[1] != k or w_dec.shape[0] != k or b_enc.shape != (k,) or values.shape != (k,):
            raise ValueError(f"an SAE clamp of {k} features needs W_enc (d, {k}), b_enc ({k},), W_dec ({k}, d) and "
                             f"{k} values; got {tuple(w_enc.shape)}, {tuple(b_enc.shape)}, {tuple(w_dec.shape)}, "
                             f"{tuple(values.shape)}")
        self.hook_name, self.features, self.info = hook_name, [int(f) for f in features], dict(info or {})
        for name, t in zip(_BUFFERS, (w_enc, b_enc, b_dec, w_dec, values)):
            self.register_buffer(name, t.detach().clone().float(), persistent=False)

    @classmethod
    def from_sae(cls, sae: Any, hook_name: str, features: list[int], values: torch.Tensor,
                 info: dict | None = None) -> SAEClamp:
        """The clamp of `features` of a ReLU SAE (sae-lens' standard architecture: its input minus b_dec when
        `apply_b_dec_to_input`, then W_enc, b_enc and a ReLU)."""
        idx = torch.tensor([int(f) for f in features], dtype=torch.long)
        b_dec = sae.b_dec.detach()
        if not getattr(sae.cfg, "apply_b_dec_to_input", True):
            b_dec = torch.zeros_like(b_dec)
        return cls(hook_name, features, sae.W_enc.detach()[:, idx], sae.b_enc.detach()[idx], b_dec,
                   sae.W_dec.detach()[idx], values, info)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The chosen features' activations (…, k) at activation x (…, d)."""
        return torch.relu((x.float() - self.b_dec) @ self.w_enc + self.b_enc)

    def edit(self, x: torch.Tensor) -> torch.Tensor:
        f = self.encode(x)
        delta = torch.where(f > 0, self.values - f, torch.zeros_like(f)) @ self.w_dec
        return (x.float() + delta).to(x.dtype)

    def forward(self, module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (self.edit(output[0]), *output[1:])
        return self.edit(output)


def attach_clamp(model: Any, clamp: SAEClamp) -> Any:
    """Put `clamp` on `model` at its hook (an output: `blocks.L.hook_resid_post`, `hook_attn_out` or
    `hook_mlp_out`), replacing a clamp already there; returns the model."""
    module, kind, _ = resolve_hook(model, clamp.hook_name)
    if kind != "output":
        layer = clamp.hook_name.split(".")[1]
        raise ValueError(f"an SAE clamp edits a module's output; {clamp.hook_name!r} is layer {layer}'s input: use "
                         f"blocks.{int(layer) - 1}.hook_resid_post (the same activation) or another output hook")
    remove_clamp(model)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    module.sae_clamp = clamp.to(device)
    module.register_forward_hook(module.sae_clamp)
    return model


def clamps(model: Any) -> list[tuple[torch.nn.Module, SAEClamp]]:
    """(module, clamp) for every clamp on `model`."""
    return [(m, m.sae_clamp) for m in model.modules() if isinstance(getattr(m, "sae_clamp", None), SAEClamp)]


def remove_clamp(model: Any) -> None:
    """Take every SAE clamp off `model` (its hook and its module)."""
    for module, clamp in clamps(model):
        for key, hook in list(module._forward_hooks.items()):
            if hook is clamp:
                del module._forward_hooks[key]
        del module.sae_clamp


def save_clamp(model: Any, folder: str) -> bool:
    """Write the model's clamp beside its weights (False: it has none)."""
    found = clamps(model)
    if not found:
        return False
    if len(found) > 1:
        raise ValueError(f"the model carries {len(found)} SAE clamps; save_clamp writes one")
    clamp = found[0][1]
    os.makedirs(folder, exist_ok=True)
    save_file({name: getattr(clamp, name).detach().cpu().contiguous() for name in _BUFFERS},
              os.path.join(folder, CLAMP_WEIGHTS))
    write_json(os.path.join(folder, CLAMP_CONFIG), {"hook_name": clamp.hook_name, "features": clamp.features,
                                                    "info": clamp.info})
    return True


def load_clamp(model: Any, folder: str) -> SAEClamp | None:
    """Attach the clamp saved in `folder` (None: there is none)."""
    path = os.path.join(folder, CLAMP_CONFIG)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        meta = json.load(fh)
    tensors = load_file(os.path.join(folder, CLAMP_WEIGHTS))
    clamp = SAEClamp(meta["hook_name"], meta["features"], *(tensors[n] for n in _BUFFERS), info=meta.get("info"))
    attach_clamp(model, clamp)
    return clamp
