"""Where sae-lens hook names live in a Hugging Face model, and capturing activations there.

sae-lens names hook points the TransformerLens way (`blocks.3.hook_resid_post`);
HF models have `model.layers[3]`. The mapping is explicit:

| sae-lens hook | HF place |
|---|---|
| `blocks.L.hook_resid_pre` | input of decoder layer L |
| `blocks.L.hook_resid_post` | output of decoder layer L |
| `blocks.L.hook_attn_out` | output of layer L's attention module |
| `blocks.L.hook_mlp_out` | output of layer L's MLP |
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch

HOOK_PATTERN = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_post|attn_out|mlp_out)$")


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The decoder layer list of a causal LM (through PEFT and DDP wrappers)."""
    base = model
    for attr in ("module",):  # DDP
        base = getattr(base, attr, base)
    if hasattr(base, "get_base_model"):  # PEFT
        base = base.get_base_model()
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "layers"):
        obj = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ValueError(
        f"cannot find the decoder layers of {type(base).__name__}; expected model.layers or transformer.h"
    )


def resolve_hook(model: Any, hook_name: str) -> tuple[torch.nn.Module, str, str]:
    """(module, 'input' or 'output', HF module path) for a sae-lens hook name.

    Example:
        >>> resolve_hook(model, "blocks.0.hook_resid_post")[2]  # doctest: +SKIP
        'model.layers.0'
    """
    match = HOOK_PATTERN.match(hook_name)
    if not match:
        raise ValueError(
            f"unsupported hook name {hook_name!r}: use blocks.L.hook_resid_pre, hook_resid_post, hook_attn_out or "
            "hook_mlp_out"
        )
    layer, kind = int(match.group(1)), match.group(2)
    layers = decoder_layers(model)
    if layer >= len(layers):
        raise ValueError(
            f"hook {hook_name!r} names layer {layer} but the model has {len(layers)} layers: set sae_hook_name to "
            f"blocks.L.hook_... with L from 0 to {len(layers) - 1}"
        )
    block = layers[layer]
    if kind == "resid_pre":
        return block, "input", f"layers.{layer}"
    if kind == "resid_post":
        return block, "output", f"layers.{layer}"
    sub = "self_attn" if kind == "attn_out" else "mlp"
    if not hasattr(block, sub):
        raise ValueError(f"layer {layer} of this model has no {sub!r} module for {hook_name!r}")
    return getattr(block, sub), "output", f"layers.{layer}.{sub}"


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, tuple) else x


class StopForward(Exception):
    """Raised by a capture hook to skip the layers after the probed one."""


@contextlib.contextmanager
def capture(model: Any, hook_name: str, stop: bool = False) -> Iterator[list[torch.Tensor]]:
    """Collect the hook point's activations of every forward pass inside the block.

    With `stop=True` the forward pass ends at the hook point (raise-and-catch):
    the later layers and the LM head, most of the cost, are skipped. Run the
    model through `run_until_hook` then.
    """
    module, where, _ = resolve_hook(model, hook_name)
    store: list[torch.Tensor] = []

    def keep(x: torch.Tensor) -> None:
        store.append(x.detach())
        if stop:
            raise StopForward

    if where == "input":
        handle = module.register_forward_pre_hook(lambda m, args, kwargs: keep(args[0]), with_kwargs=True)
    else:
        handle = module.register_forward_hook(lambda m, i, o: keep(_first(o)))
    try:
        yield store
    finally:
        handle.remove()


def run_until_hook(model: Any, **inputs: Any) -> None:
    """Forward pass that a `capture(..., stop=True)` hook ends early."""
    try:
        model(**inputs)
    except StopForward:
        pass


@contextlib.contextmanager
def replace_activation(
    model: Any, hook_name: str, fn: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Replace the hook point's activation by `fn(activation)` inside the block (for interventions)."""
    module, where, _ = resolve_hook(model, hook_name)
    if where == "input":

        def pre(m, args, kwargs):
            return (fn(args[0]), *args[1:]), kwargs

        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    else:

        def post(m, i, o):
            if isinstance(o, tuple):
                return (fn(o[0]), *o[1:])
            return fn(o)

        handle = module.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()
