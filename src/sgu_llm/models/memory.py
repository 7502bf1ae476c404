"""Memory per GPU of SGU training, and of the baselines, by training mode, engine, stash mode and precision.

A model of the bytes each process holds, for a Hugging Face causal LM given by its config. Parameters are
counted by building the model on the meta device (and applying peft's LoRA to it), never by formula;
activations are a formula, stated in `activation_bytes` and checked against the tensors autograd saves
(`tests/test_memory_model.py`, which also checks parameters, gradients, stash and optimizer state against
the bytes one SGU step holds). Every figure is in bytes; tables print GiB (2**30 bytes).

    python scripts/memory_model.py --model llama-3.1-8b --micro_batch 4 --seq_len 512

The components, per GPU (T trainable parameters, P all of them, N processes):

- `params`: the weights. HF Trainer/Accelerate bf16 ("amp": a float32 model, bf16 autocast) keeps 4 B;
  "bf16" (a model loaded in bfloat16, the recipes' `dtype: auto` on a bf16 checkpoint) 2 B, peft's LoRA
  adapters staying float32; DeepSpeed bf16 2 B. FSDP2 and ZeRO-3 hold 1/N (FSDP2 upcasts trainable weights
  to float32 under mixed precision, as Accelerate does).
- `gradients`: the engine's gradients plus SGU's g_r where SGU keeps its own. DDP: T in `param.grad`;
  FSDP2: the local shard (T/N); ZeRO-2: DeepSpeed's float32 partition (T/N) plus SGU's full float32 g_r
  (`DeepSpeedPairing` reads every full gradient with `safe_get_full_grad`); ZeRO-3: the partition plus SGU's
  local float32 partition of g_r (T/N each).
- `stash`: SGU's forget gradient. "float32" 4 B and "bfloat16" 2 B per trainable parameter (1/N under
  FSDP2 and ZeRO-3); "lean" (one process): one tensor, the largest trainable one, beyond the gradients.
  With gradient accumulation the stash costs more than its dtype says: each later forget pass puts g_f back
  into `param.grad` in the parameter's dtype (so a bf16 stash peaks at the float32 size), and lean mode holds
  every g_f beside the earlier micro-batches' g_r.
- `optimizer`: AdamW's two states in the trainable weights' dtype (and a 4 B step per tensor); DeepSpeed
  adds float32 master weights; 1/N under FSDP2 and ZeRO.
- `reference`: the frozen reference of NPO-style objectives: the trainer's `copy.deepcopy(model)`, so in the
  model's dtype (float32 under "amp"; bf16 in DeepSpeed's engine), whole on every rank under DDP and ZeRO-2,
  1/N under FSDP2 and ZeRO-3 (plus its all-gathered layers). None with LoRA: the base model with adapters
  disabled is the reference.
- `activations`: one micro-batch's (`activation_bytes`); twice that for methods whose loss forwards the
  forget and the retain batch in one graph (GradDiff, NPO), SGU runs them one backward at a time.
- `buffers`: DDP's gradient buckets (T in the gradients' dtype for N > 1: Accelerate leaves
  `gradient_as_bucket_view` off); FSDP2's all-gathered bf16 parameters (the root group: embeddings, lm_head
  and final norm, unsharded from the first forward to the end of backward, and two decoder layers: the one
  computing and the one prefetched) and unsharded bf16 gradients before their reduce-scatter; ZeRO-3's two
  gathered layers and largest non-layer tensor; ZeRO-2: SGU's three full-size float32 copies of one tensor
  while it takes a gradient (get, clone, zeros).

`total` is the sum: an upper bound on the peak, since activations peak at the start of a backward and
gradients at its end. Not counted: the CUDA context, the allocator's fragmentation, NCCL's buffers and the
selection's temporaries; `fits` keeps a headroom (10 % by default) for them.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

GiB = 2**30
ENGINES = ("ddp", "fsdp2", "zero2", "zero3")
STASH_MODES = ("float32", "bfloat16", "lean")
STASH_BYTES = {"float32": 4, "bfloat16": 2}
# "amp" and "bf16" are those of DDP and FSDP2 (the ZeRO engines then run DeepSpeed's bf16); "fp32" (no mixed
# precision, as the CPU tests run) holds every state in float32 under every engine.
PRECISIONS = ("amp", "bf16", "fp32")
WORLD_SIZES = (1, 2, 4, 8)
TRAINING_MODES = ("full", "lora")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
HEADROOM = 0.10
# Nominal sizes read as GiB: nvidia-smi reports 81559 MiB (79.6 GiB) for an 80 GB H100 and 143771 MiB
# (140.4 GiB) for a 141 GB H200; the headroom covers the difference.
GPUS = {"80 GB": 80 * GiB, "141 GB": 141 * GiB}
COMPONENTS = ("params", "gradients", "stash", "optimizer", "reference", "activations", "buffers")


@dataclass(frozen=True)
class Method:
    """What a method holds beyond the model: SGU's stash, a reference model, and how many micro-batches
    (forget and retain) one graph holds at once."""

    stash: bool
    reference: bool
    splits_per_graph: int


METHODS = {
    "sgu": Method(stash=True, reference=False, splits_per_graph=1),
    "sgu_npo": Method(stash=True, reference=True, splits_per_graph=1),  # SGU with forget_loss: npo
    "npo": Method(stash=False, reference=True, splits_per_graph=2),
    "graddiff": Method(stash=False, reference=False, splits_per_graph=2),
    "gradascent": Method(stash=False, reference=False, splits_per_graph=1),
    "simnpo": Method(stash=False, reference=False, splits_per_graph=2),
}

# Published shapes (the models' config.json on the Hub), so no download is needed.
BUILTIN_SHAPES = {
    "llama-3.2-1b": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
        max_position_embeddings=131072,
    ),
    "llama-3.1-8b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
        max_position_embeddings=131072,
    ),
    "llama-3.1-70b": dict(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
        max_position_embeddings=131072,
    ),
    "smollm2-135m": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
        max_position_embeddings=8192,
    ),
}


# The Hub models whose shapes are built in (their instruct and base checkpoints share the shape).
HUB_SHAPES = {
    "meta-llama/Llama-3.2-1B": "llama-3.2-1b",
    "meta-llama/Llama-3.2-1B-Instruct": "llama-3.2-1b",
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b",
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Llama-3.1-70B": "llama-3.1-70b",
    "meta-llama/Llama-3.1-70B-Instruct": "llama-3.1-70b",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m",
}


def load_config(name_or_path: str) -> Any:
    """A model's config from a built-in name (`BUILTIN_SHAPES`, or a Hub id in `HUB_SHAPES`), a `config.json`
    file or a model folder.

    Nothing is downloaded.

    Example:
        >>> load_config("llama-3.1-8b").num_hidden_layers
        32
    """
    name_or_path = HUB_SHAPES.get(name_or_path, name_or_path)
    if name_or_path in BUILTIN_SHAPES:
        return LlamaConfig(**BUILTIN_SHAPES[name_or_path])
    path = os.path.join(name_or_path, "config.json") if os.path.isdir(name_or_path) else name_or_path
    if not os.path.isfile(path):
        raise ValueError(
            f"no model config at {name_or_path!r}: give a config.json file, a model folder holding one, or a "
            f"built-in name ({', '.join(BUILTIN_SHAPES)})"
        )
    with open(path) as fh:
        values = json.load(fh)
    model_type = values.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"{path} has no model_type: is it a Hugging Face model's config.json?")
    return AutoConfig.for_model(model_type, **values)


@dataclass(frozen=True)
class Training:
    """Which parameters train: all of them ("full"), or LoRA adapters of rank `lora_r` on `lora_targets`."""

    mode: str = "full"
    lora_r: int = 16
    lora_targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        if self.mode not in TRAINING_MODES:
            raise ValueError(f"training mode must be one of {TRAINING_MODES}, got {self.mode!r}")
        if self.mode == "lora" and (self.lora_r < 1 or not self.lora_targets):
            raise ValueError(f"LoRA needs lora_r >= 1 and target modules, got r={self.lora_r}, {self.lora_targets}")


@dataclass(frozen=True)
class ModelShape:
    """Parameter counts of one model as trained (counted on the meta device) and the dimensions the
    activation formula reads."""

    training: str
    total: int  # every parameter (tied weights once)
    trainable: int
    trainable_tensors: int
    largest_trainable: int  # elements of the largest trainable tensor
    num_layers: int
    layer: int  # parameters of the largest decoder layer (adapters included)
    layer_trainable: int
    layer_linear: int  # weights of one layer's nn.Linear modules (base and adapters): what autocast casts
    root: int  # everything outside the decoder layers: embeddings, lm_head, final norm
    root_trainable: int
    largest_root: int
    lm_head: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    lora_r: int = 0
    lora_modules: int = 0  # adapted modules per decoder layer

    @property
    def lora(self) -> bool:
        return self.training == "lora"


def _decoder_layers(model: torch.nn.Module, num_layers: int) -> torch.nn.ModuleList:
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers:
            return module
    raise ValueError(
        f"{type(model).__name__} has no list of {num_layers} decoder layers (num_hidden_layers): the memory model "
        "needs a decoder-only transformer"
    )


def _check_targets(model: torch.nn.Module, targets: tuple[str, ...]) -> None:
    names = [n for n, _ in model.named_modules()]
    missing = sorted(t for t in targets if not any(n == t or n.endswith("." + t) for n in names))
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"LoRA targets {missing} match no module; the model's linear layers are named {linear}")


def model_shape(config: Any, training: Training | None = None) -> ModelShape:
    """Count the parameters of `config`'s causal LM, as `training` trains it (default: all), on the meta device.

    Example:
        >>> model_shape(load_config("llama-3.2-1b")).total
        1235814400
    """
    training = training or Training()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' deprecation notes, called by peft
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        lm_head = model.get_output_embeddings().weight.numel()
        if training.mode == "lora":
            _check_targets(model, training.lora_targets)
            model = get_peft_model(model, LoraConfig(r=training.lora_r, target_modules=list(training.lora_targets)))
    layers = _decoder_layers(model, config.num_hidden_layers)
    in_layers = {id(p) for p in layers.parameters()}
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    root = [p for p in params if id(p) not in in_layers]

    def count(ps) -> int:
        return sum(p.numel() for p in ps)

    heads = config.num_attention_heads
    return ModelShape(
        training=training.mode,
        total=count(params),
        trainable=count(trainable),
        trainable_tensors=len(trainable),
        largest_trainable=max(p.numel() for p in trainable),
        num_layers=len(layers),
        layer=max(count(layer.parameters()) for layer in layers),
        layer_trainable=max(count(p for p in layer.parameters() if p.requires_grad) for layer in layers),
        layer_linear=max(
            sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear)) for layer in layers
        ),
        root=count(root),
        root_trainable=count(p for p in root if p.requires_grad),
        largest_root=max((p.numel() for p in root), default=0),
        lm_head=lm_head,
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        vocab=config.vocab_size,
        lora_r=training.lora_r if training.mode == "lora" else 0,
        lora_modules=sum(1 for n, _ in layers[0].named_modules() if n.endswith("lora_A"))
        if training.mode == "lora" else 0,
    )


@dataclass(frozen=True)
class Activations:
    """One micro-batch's activation bytes: what autograd saves in the forward (`saved`, plus the bf16 weight
    copies autocast makes, `weight_casts`), the layer that gradient checkpointing rebuilds during backward
    (`recompute`) and the logits' gradient at the start of backward (`transient`)."""

    saved: int
    weight_casts: int
    recompute: int
    transient: int

    @property
    def peak(self) -> int:
        return self.saved + self.weight_casts + self.recompute + self.transient


def layer_bytes_per_token(shape: ModelShape, kind: str) -> int:
    """Bytes one decoder layer saves for backward per token (`kind` "amp": float32 weights under bf16 autocast;
    "bf16": bf16 weights), for a Llama-style layer (RMSNorm, SDPA attention, SwiGLU MLP).

    With h hidden, q = heads * head_dim, kv = kv_heads * head_dim, i intermediate, n heads, r the LoRA rank
    and a the adapted modules per layer:

        amp,  full:  26h + 4q + 4kv + 8i + 4n + 8
        amp,  LoRA:  18h + 6q + 4kv + 8i + 4n + 2ra + 8
        bf16, full:  16h + 4q + 4kv + 8i + 4n + 8
        bf16, LoRA:  28h + 8q + 4kv + 10i + 4n + 4ra + 8   (peft keeps the adapters in float32)

    Term by term (full, amp): each RMSNorm saves its float32 input and normalised output (8h) and its rsqrt
    (4); q, k and v each save their own bf16 cast of the input (6h: autocast casts per call), gate and up too
    (4h); SDPA saves q, k, v, its output (4q + 4kv) and its float32 log-sum-exp (4n); the MLP saves gate, up,
    silu(gate) and their product (8i). In bf16 the norms save their float32 input and bf16 normalised value
    (6h) and one output (2h) is shared by the projections it feeds. Under LoRA the frozen norms and base
    layers save no input; each adapter saves its input (cast to float32 by peft, then to bf16 by autocast)
    and its rank-r output. Eager attention would add the n x s x s scores; SDPA and flash kernels do not
    save them.
    """
    h, i, n = shape.hidden, shape.intermediate, shape.heads
    q, kv, ra = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.lora_r * shape.lora_modules
    if kind == "amp":
        if shape.lora:
            return 18 * h + 6 * q + 4 * kv + 8 * i + 4 * n + 2 * ra + 8
        return 26 * h + 4 * q + 4 * kv + 8 * i + 4 * n + 8
    if shape.lora:
        return 28 * h + 8 * q + 4 * kv + 10 * i + 4 * n + 4 * ra + 8
    return 16 * h + 4 * q + 4 * kv + 8 * i + 4 * n + 8


def activation_bytes(
    shape: ModelShape, micro_batch: int, seq_len: int, kind: str = "amp", checkpointing: bool = False
) -> Activations:
    """Activation bytes of one micro-batch of `micro_batch` sequences of `seq_len` tokens.

    With t = micro_batch * seq_len tokens, t' = micro_batch * (seq_len - 1) predicted ones, L layers, V the
    vocabulary and `layer_bytes_per_token` per layer:

        saved        = t * (L * layer + head) + t' * (4V + 9) + 4 + rope   without checkpointing
                     = t * (L * c + head) + t' * (4V + 9) + 4              with it (HF: every decoder layer)
        weight_casts = 2 * (L * layer_linear + lm_head)            amp without checkpointing
                     = 2 * lm_head                                 amp with it; 0 in bf16
        recompute    = t * layer + 2 * layer_linear (amp)          with checkpointing, else 0
        transient    = 8V * t'                                     the logits' float32 gradient and its input's

    head (final norm, embedding indices, lm_head input) is 10h + 12 (amp) or 8h + 12 (bf16) in full training
    and 4h + 4 under LoRA; c, the checkpointed layer's saved input, is 4h (amp: a float32 residual) or 2h;
    the logits are saved once in float32 (4V) with the targets and mask (9), and the loss (4); rope, the rotary
    cos and sin, is 2 * seq_len * head_dim * (4 B amp, 2 B bf16). Under amp the bf16 weight copies live while
    the backward needs them; with checkpointing each layer's are made again when it is rebuilt.

    Checked on CPU (tests/test_memory_model.py) against the tensors autograd saves: exact in full training and
    under LoRA with checkpointing; under LoRA without checkpointing the first layer saves less than the formula
    says (nothing before it needs a gradient), a part of one layer in L.
    """
    if kind not in ("amp", "bf16"):
        raise ValueError(f"activation kind must be 'amp' or 'bf16', got {kind!r}")
    if micro_batch < 1 or seq_len < 2:
        raise ValueError(f"micro_batch must be >= 1 and seq_len >= 2, got {micro_batch} and {seq_len}")
    h = shape.hidden
    tokens, predicted = micro_batch * seq_len, micro_batch * (seq_len - 1)
    layer = layer_bytes_per_token(shape, kind)
    if shape.lora:
        head = 4 * h + 4
    else:
        head = 10 * h + 12 if kind == "amp" else 8 * h + 12
    logits = predicted * (4 * shape.vocab + 9) + 4
    cast = 2 if kind == "amp" else 0
    rotary = 2 * seq_len * shape.head_dim * (4 if kind == "amp" else 2)  # cos and sin, shared by the layers
    if checkpointing:
        kept = 4 * h if kind == "amp" else 2 * h
        return Activations(
            saved=tokens * (shape.num_layers * kept + head) + logits,
            weight_casts=cast * shape.lm_head,
            recompute=tokens * layer + cast * shape.layer_linear,
            transient=8 * shape.vocab * predicted,
        )
    return Activations(
        saved=tokens * (shape.num_layers * layer + head) + logits + rotary,
        weight_casts=cast * (shape.num_layers * shape.layer_linear + shape.lm_head),
        recompute=0,
        transient=8 * shape.vocab * predicted,
    )


@dataclass(frozen=True)
class Setup:
    """How a run trains: method, engine and its world size, SGU's stash, precision and batch.

    `precision` is that of DDP and FSDP2 ("amp" or "bf16", see the module's docstring; the ZeRO engines then
    run DeepSpeed's bf16), or "fp32" everywhere (no mixed precision: the CPU tests; its activations are read
    with amp's formula, which saves some tensors in bf16, so they are an underestimate). `stash` is ignored for methods without one (its mode is then "none").
    """

    engine: str = "ddp"
    world_size: int = 1
    stash: str = "float32"
    method: str = "sgu"
    precision: str = "amp"
    micro_batch: int = 4
    seq_len: int = 512
    checkpointing: bool = False
    grad_accum: int = 1

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.world_size < 1:
            raise ValueError(f"world_size must be at least 1, got {self.world_size}")
        if self.stash not in STASH_MODES:
            raise ValueError(f"stash must be one of {STASH_MODES}, got {self.stash!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {tuple(METHODS)}, got {self.method!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be at least 1, got {self.grad_accum}")
        if self.stash_mode == "lean" and (self.world_size > 1 or self.engine != "ddp"):
            raise ValueError(
                f"lean selection works in one process without an engine (got {self.engine} with world_size "
                f"{self.world_size}), as the trainer refuses it otherwise: use engine='ddp' with world_size=1, "
                "or stash='bfloat16' to halve the stash"
            )

    @property
    def stash_mode(self) -> str:
        return self.stash if METHODS[self.method].stash else "none"

    @property
    def effective_precision(self) -> str:
        if self.precision == "fp32":
            return "fp32"
        return "deepspeed" if self.engine.startswith("zero") else self.precision


@dataclass(frozen=True)
class DtypeBytes:
    """Bytes per parameter of each kind of state under one precision."""

    trainable: int
    frozen: int
    grad: int  # the engine's gradient (DeepSpeed: its float32 partition)
    adam: int  # both AdamW states
    master: int  # DeepSpeed's float32 master weights
    reference: int
    activations: str  # `activation_bytes` kind


def dtype_bytes(precision: str, engine: str, lora: bool) -> DtypeBytes:
    """Bytes per parameter under `precision` ("amp", "bf16", "fp32" or "deepspeed") and `engine`.

    Example:
        >>> dtype_bytes("deepspeed", "zero2", lora=False)
        DtypeBytes(trainable=2, frozen=2, grad=4, adam=8, master=4, reference=2, activations='bf16')
    """
    if precision == "deepspeed":
        return DtypeBytes(trainable=2, frozen=2, grad=4, adam=8, master=4, reference=2, activations="bf16")
    if precision == "amp":
        return DtypeBytes(trainable=4, frozen=4, grad=4, adam=8, master=0, reference=4,
                          activations="bf16" if engine == "fsdp2" else "amp")
    if precision == "fp32":
        return DtypeBytes(trainable=4, frozen=4, grad=4, adam=8, master=0, reference=4, activations="amp")
    if precision != "bf16":
        raise ValueError(f"precision must be 'amp', 'bf16', 'fp32' or 'deepspeed', got {precision!r}")
    # A bf16 model: peft's adapters stay float32, and Accelerate's FSDP2 upcasts trainable weights to float32.
    trainable = 4 if lora or engine == "fsdp2" else 2
    return DtypeBytes(trainable=trainable, frozen=2, grad=trainable, adam=2 * trainable, master=0, reference=2,
                      activations="bf16")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU of one configuration, by component (see the module's docstring), and their total."""

    model: str
    training: str
    engine: str
    world_size: int
    stash_mode: str
    method: str
    precision: str
    params: int
    gradients: int
    stash: int
    optimizer: int
    reference: int
    activations: int
    buffers: int

    @property
    def total(self) -> int:
        return sum(getattr(self, c) for c in COMPONENTS)


def _part(x: int, n: int) -> int:
    return -(-x // n)  # ceil, in integers


def estimate(shape: ModelShape, setup: Setup, model: str = "") -> MemoryEstimate:
    """Bytes per GPU of training `shape` as `setup` says.

    Example:
        >>> shape = model_shape(load_config("llama-3.2-1b"))
        >>> e = estimate(shape, Setup(stash="bfloat16"))
        >>> e.stash == 2 * shape.trainable, e.gradients == 4 * shape.trainable
        (True, True)
    """
    n, engine, method = setup.world_size, setup.engine, METHODS[setup.method]
    b = dtype_bytes(setup.effective_precision, engine, shape.lora)
    t, frozen = shape.trainable, shape.total - shape.trainable
    sharded = engine in ("fsdp2", "zero3")
    sgu = method.stash
    layer_gather = 2 * (shape.root + 2 * shape.layer) if engine == "fsdp2" else 2 * (2 * shape.layer + shape.largest_root)

    weights = t * b.trainable + frozen * b.frozen
    params = _part(weights, n) if sharded else weights

    if engine == "ddp":
        gradients = t * b.grad
    elif engine == "fsdp2":
        gradients = _part(t * b.grad, n)
    elif engine == "zero2":
        gradients = _part(t * b.grad, n) + (4 * t if sgu else 0)  # SGU's full float32 g_r on every rank
    else:
        gradients = _part(t * b.grad, n) * (2 if sgu else 1)  # SGU's local float32 partition of g_r

    stash = 0
    if setup.stash_mode == "lean":
        stash = (t if setup.grad_accum > 1 else shape.largest_trainable) * b.grad
    elif sgu:
        per = STASH_BYTES[setup.stash]
        if engine in ("ddp", "fsdp2") and setup.grad_accum > 1:
            per = max(per, b.trainable)  # later forget passes put g_f back in param.grad, in the weights' dtype
        stash = _part(t * per, n) if sharded else t * per

    states = t * (b.adam + b.master) + (4 * shape.trainable_tensors if engine in ("ddp", "fsdp2") else 0)
    optimizer = states if engine == "ddp" else _part(states, n)

    reference = 0
    if method.reference and not shape.lora:
        ref_weights = shape.total * b.reference
        reference = _part(ref_weights, n) + layer_gather if sharded else ref_weights

    act = activation_bytes(shape, setup.micro_batch, setup.seq_len, b.activations, setup.checkpointing)
    k = method.splits_per_graph
    # Autocast caches the casts of trainable weights within one forward; frozen weights are cast per call.
    casts = act.weight_casts * (k if shape.lora else 1)
    activations = k * (act.saved + act.transient) + casts + act.recompute

    if engine == "ddp":
        buffers = t * b.grad if n > 1 else 0
    elif engine == "fsdp2":
        buffers = layer_gather + 2 * (shape.root_trainable + shape.layer_trainable)
    elif engine == "zero2":
        buffers = 3 * 4 * shape.largest_trainable if sgu else 0
    else:
        buffers = layer_gather + 2 * shape.layer_trainable

    return MemoryEstimate(
        model=model, training=shape.training, engine=engine, world_size=n, stash_mode=setup.stash_mode,
        method=setup.method, precision=setup.effective_precision, params=params, gradients=gradients,
        stash=stash, optimizer=optimizer, reference=reference, activations=activations, buffers=buffers,
    )


def recipe_estimate(recipe: dict, engine: str, world_size: int, reference: bool) -> MemoryEstimate:
    """The estimate for a recipe's fields (`recipes/<model>/<method>.yaml`, loaded) launched on `engine` with
    `world_size` GPUs: its model (a built-in shape or Hub id), LoRA or full, method, micro-batch, max_length,
    gradient checkpointing and accumulation, and precision (`dtype: bfloat16` with `bf16: true` is "bf16").
    `reference`: the recipe's objective has a frozen reference model (the objective's `needs_reference`).

    A method other than SGU with a reference (NPO, AltPO, IdkDPO, UNDIAL, RMU) counts as NPO (the forget and
    retain batches in one graph; AltPO's alternative answers' forward is not counted), one without as
    GradDiff unless it has its own entry in `METHODS`; SGU with such an objective as `sgu_npo`.
    """
    method = recipe.get("method", "sgu")
    if method == "sgu":
        name = "sgu_npo" if reference else "sgu"
    else:
        name = "npo" if reference else (method if method in METHODS else "graddiff")
    training = Training("lora", recipe.get("lora_r", 16), tuple(recipe.get("lora_target_modules", LORA_TARGETS))) \
        if recipe.get("use_peft") else Training()
    shape = model_shape(load_config(recipe["model_name_or_path"]), training)
    bf16_model = recipe.get("dtype") in ("bfloat16", "auto") and recipe.get("bf16", False)
    setup = Setup(
        engine=engine, world_size=world_size, stash=recipe.get("stash_dtype", "float32").replace("auto", "float32"),
        method=name, precision="bf16" if bf16_model else "amp", micro_batch=recipe.get("per_device_train_batch_size", 8),
        seq_len=recipe.get("max_length", 512), checkpointing=recipe.get("gradient_checkpointing", False),
        grad_accum=recipe.get("gradient_accumulation_steps", 1),
    )
    return estimate(shape, setup, recipe["model_name_or_path"])


@dataclass(frozen=True)
class Grid:
    """The configurations to estimate: engines x stash modes x world sizes, for each training mode."""

    engines: tuple[str, ...] = ENGINES
    stash_modes: tuple[str, ...] = STASH_MODES
    world_sizes: tuple[int, ...] = WORLD_SIZES
    setup: Setup = field(default_factory=Setup)


def grid_estimates(shapes: list[ModelShape], grid: Grid | None = None, model: str = "") -> list[MemoryEstimate]:
    """`estimate` over the grid (default: `Grid()`), skipping what the trainer refuses (lean selection beyond one
    process). Methods without a stash get one row per engine and world size (stash mode "none").
    """
    grid = grid or Grid()
    modes = grid.stash_modes if METHODS[grid.setup.method].stash else grid.stash_modes[:1]
    out = []
    for shape in shapes:
        for engine in grid.engines:
            for stash in modes:
                for n in grid.world_sizes:
                    if METHODS[grid.setup.method].stash and stash == "lean" and (n > 1 or engine != "ddp"):
                        continue
                    out.append(estimate(shape, replace(grid.setup, engine=engine, world_size=n, stash=stash), model))
    return out


def fits(e: MemoryEstimate, gpu_bytes: int, headroom: float = HEADROOM) -> bool:
    """Whether `e` fits on a GPU of `gpu_bytes`, keeping `headroom` (a fraction) free."""
    if not 0 <= headroom < 1:
        raise ValueError(f"headroom is a fraction of the GPU's memory in [0, 1), got {headroom}")
    return e.total <= gpu_bytes * (1 - headroom)


def which_fit(
    estimates: list[MemoryEstimate], gpus: dict[str, int] = GPUS, headroom: float = HEADROOM
) -> dict[str, list[MemoryEstimate]]:
    """For each GPU (name -> bytes), the estimates that fit on it."""
    return {name: [e for e in estimates if fits(e, size, headroom)] for name, size in gpus.items()}


def _gib(x: int) -> str:
    return f"{x / GiB:.1f}"


def markdown_tables(
    estimates: list[MemoryEstimate], gpus: dict[str, int] = GPUS, headroom: float = HEADROOM
) -> str:
    """Two markdown tables: the total GiB per GPU of each (training, engine, stash mode) at each world size with
    the fewest GPUs that fit it on each GPU size, then every component of every configuration."""
    sizes = sorted({e.world_size for e in estimates})
    rows: dict[tuple[str, str, str], dict[int, MemoryEstimate]] = {}
    for e in estimates:
        rows.setdefault((e.training, e.engine, e.stash_mode), {})[e.world_size] = e
    head = ["training", "engine", "stash", *(f"N={n}" for n in sizes), *(f"fewest {g}" for g in gpus)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (training, engine, stash), by_n in rows.items():
        totals = [_gib(by_n[n].total) if n in by_n else "–" for n in sizes]
        fewest = []
        for size in gpus.values():
            ok = [n for n in sizes if n in by_n and fits(by_n[n], size, headroom)]
            fewest.append(str(ok[0]) if ok else "none")
        lines.append("| " + " | ".join([training, engine, stash, *totals, *fewest]) + " |")
    detail = ["training", "engine", "stash", "N", *COMPONENTS, "total", *gpus]
    lines += ["", "| " + " | ".join(detail) + " |", "|" + "---|" * len(detail)]
    for e in estimates:
        cells = [e.training, e.engine, e.stash_mode, str(e.world_size), *(_gib(getattr(e, c)) for c in COMPONENTS),
                 _gib(e.total), *("yes" if fits(e, size, headroom) else "no" for size in gpus.values())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
