"""Reuse the frozen lower layers' output across scorings of a model that is being trained.

When unlearning updates only the top decoder layers (`unlearn_params`, e.g. SmolLM2's layers 22-29 of 30),
the hidden state entering the first trainable layer is the same at every epoch for the same padded batch.
`FrozenPrefix` records it on the first scoring pass (a forward pre-hook on that layer) and, on later passes
over the same batch, runs the decoder from that layer on (`inputs_embeds` = the recorded state, the decoder's
layer list cut to the trainable part): the same numbers as a full pass, at (trainable layers / all layers)
of the cost. Masks and rotary positions do not depend on the layers, so they come out the same.

It stays off (`enabled` False, a plain forward) where it cannot be exact or does not help: no `layers` list
on the decoder, trainable embeddings or a trainable first layer, partitioned (ZeRO-3) parameters, or decoders
whose layers differ by type (`config.layer_types` with more than one kind: sliding-window layers would get the
wrong mask once the list is cut). A checksum of the frozen part is taken when a state is recorded and
checked on every use: if those weights changed, the stored states are dropped and recorded again.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import torch


def _decoder(model: Any) -> Any:
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or decoder is model or not isinstance(getattr(decoder, "layers", None), torch.nn.ModuleList):
        return None
    return decoder


def _cuttable(decoder: Any) -> bool:
    """Whether the decoder's layer list can be cut (one kind of layer, parameters not partitioned)."""
    kinds = getattr(getattr(decoder, "config", None), "layer_types", None)
    if kinds is not None and len(set(kinds)) > 1:
        return False
    return not any(p.numel() == 0 for p in decoder.parameters())  # ZeRO-3 gathers inside each layer's forward


def first_trainable_layer(model: Any) -> int | None:
    """Index of the lowest decoder layer with a trainable parameter or a forward hook (an intervention such as an
    SAE clamp changes a layer's output without changing its weights) when everything below it (embeddings
    included) is frozen; None when nothing can be reused (see the module docstring)."""
    decoder = _decoder(model)
    if decoder is None or not _cuttable(decoder):
        return None
    embed = decoder.get_input_embeddings() if hasattr(decoder, "get_input_embeddings") else None
    if embed is not None and any(p.requires_grad for p in embed.parameters()):
        return None
    for i, layer in enumerate(decoder.layers):
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in layer.modules())
        if hooked or any(p.requires_grad for p in layer.parameters()):
            return i if i > 0 else None
    return None


def _key(t: torch.Tensor | None) -> tuple:
    if t is None:
        return ()
    data = t.detach().to("cpu").contiguous()
    return (tuple(data.shape), hashlib.sha1(data.numpy().tobytes()).hexdigest())


class FrozenPrefix:
    """Recorded hidden states at the first trainable layer, per padded batch (see the module docstring).

    Example:
        >>> prefix = FrozenPrefix()  # doctest: +SKIP
        >>> with prefix.active(model):  # doctest: +SKIP
        ...     scores = score_rows(model, rows, pad_id)  # first pass records, later passes reuse
    """

    def __init__(self):
        self.states: dict[tuple, torch.Tensor] = {}
        self.layer: int | None = None
        self.checksum: float | None = None
        self.hits = 0
        self.misses = 0

    def _frozen_checksum(self, decoder: Any) -> float:
        parts = list(decoder.get_input_embeddings().parameters()) if hasattr(decoder, "get_input_embeddings") else []
        for layer in decoder.layers[: self.layer]:
            parts.extend(layer.parameters())
        return float(sum(p.detach().double().sum().item() for p in parts))

    @contextlib.contextmanager
    def active(self, model: Any, layer: int | None = None) -> Iterator[None]:
        """Reuse (or record) the frozen part's output for every decoder forward inside the block.

        `layer`: reuse the input of this layer instead of the first trainable one's (an intervention at or above
        it, such as the probe's causal check clamping features at its output or input: enter this block before
        installing the intervention's hooks, so the recorded input is the unmodified one)."""
        decoder = _decoder(model)
        if layer is None:
            layer = first_trainable_layer(model)
        elif decoder is None or not _cuttable(decoder) or not 0 < layer < len(decoder.layers):
            layer = None
        if layer is None:
            yield
            return
        if layer != self.layer:
            self.states, self.layer, self.checksum = {}, layer, None
        checksum = self._frozen_checksum(decoder)
        if self.checksum is not None and checksum != self.checksum:
            self.states = {}
        self.checksum = checksum
        full = decoder.layers
        upper = torch.nn.ModuleList(list(full)[layer:])
        pending: list[tuple] = []

        def before_decoder(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            cached = any(kwargs.get(k) is not None for k in ("inputs_embeds", "cache", "past_key_values"))
            if ids is None or cached or kwargs.get("use_cache"):
                return None  # not a plain scoring pass (generation, a key-value cache): leave it alone
            key = _key(ids) + _key(kwargs.get("attention_mask")) + _key(kwargs.get("position_ids"))
            if key in self.states:
                self.hits += 1
                module.layers = upper
                kwargs = {**kwargs, "input_ids": None, "inputs_embeds": self.states[key]}
                return (), kwargs
            self.misses += 1
            pending.append(key)
            return None

        def after_decoder(module: Any, args: tuple, output: Any) -> None:
            module.layers = full
            pending.clear()

        def at_layer(module: Any, args: tuple, kwargs: dict) -> None:
            if pending:
                hidden = args[0] if args else kwargs["hidden_states"]
                self.states[pending.pop()] = hidden.detach().clone()

        handles = [
            decoder.register_forward_pre_hook(before_decoder, with_kwargs=True),
            decoder.register_forward_hook(after_decoder),
            full[layer].register_forward_pre_hook(at_layer, with_kwargs=True),
        ]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            decoder.layers = full
