"""The embedded benchmark's models: tokenizer, target, retain and noise-floor models, cached by content hash.

The target model is fine-tuned on every author plus the general sets; the retain model on the retain split
plus the general sets; a second retain model with another seed gives the benchmark's noise floor. Each is
keyed by a hash of its training data, tokenizer, model config, hyperparameters and seed, and found, in order:

1. in the cache (`cache_dir/models/<role>-<key>`), written by an earlier run;
2. among the models the package ships (`sgu_llm/models/shipped/<role>-<key>`: the tiny benchmark's models
   behind `docs/results.json`), used only if their weights hash to what was recorded when they were shipped
   (a mismatched or unreadable one is reported and rebuilt, never used);
3. otherwise fine-tuned here and cached. Fine-tuning 70 epochs amplifies float differences between
   machines, so a rebuild elsewhere can differ in its last bits: the shipped models make the sweep's
   stored results reproducible.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback

from sgu_llm.core.cache import default_cache_dir, fingerprint, lock_file, weights_fingerprint
from sgu_llm.core.files import atomic_dir, locked
from sgu_llm.data.benchmark import training_sets
from sgu_llm.data.pairing import prepare_qa_dataset
from sgu_llm.data.prompts import build_prompt
from sgu_llm.evaluation.scoring import score_rows
from sgu_llm.models.finetune import finetune
from sgu_llm.models.pretrained import is_benchmark_model, load_pretrained
from sgu_llm.models.tiny import tiny_llama, train_tokenizer

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when what a cache entry means changes
META_FILE = "sgu_llm_cache.json"
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shipped")


@dataclass
class BenchmarkArguments:
    """Sizes and fine-tuning of the embedded benchmark's tiny models (used by `builtin:` models and `sgu-llm run`)."""

    cache_dir: str = field(
        default_factory=default_cache_dir,
        metadata={"help": "Where tokenizers and fine-tuned models are cached (env SGU_LLM_CACHE)."},
    )
    vocab_size: int = field(
        default=400, metadata={"help": "BPE vocabulary of the locally trained tokenizer."}
    )
    hidden_size: int = field(default=128, metadata={"help": "Hidden size of the tiny Llama."})
    num_layers: int = field(default=2, metadata={"help": "Layers of the tiny Llama."})
    num_heads: int = field(default=4, metadata={"help": "Attention heads of the tiny Llama."})
    finetune_learning_rate: float = field(
        default=3e-3, metadata={"help": "AdamW learning rate of fine-tuning."}
    )
    finetune_batch_size: int = field(default=32, metadata={"help": "Fine-tuning batch size."})
    finetune_max_epochs: int = field(default=120, metadata={"help": "Fine-tuning stops here at the latest."})
    finetune_target_accuracy: float = field(
        default=0.999,
        metadata={"help": "Fine-tuning stops once teacher-forced answer-token accuracy reaches this."},
    )
    finetune_check_every: int = field(
        default=5, metadata={"help": "Epochs between the fine-tuning's accuracy checks (each is one forward pass)."}
    )
    finetune_base: bool = field(
        default=False,
        metadata={
            "help": "Make the target, retain and noise-floor models by fine-tuning model_name_or_path (a pretrained "
            "model, e.g. builtin:smollm2-135m-instruct) on the benchmark's data, as TOFU does, with its own "
            "tokenizer; off: model_name_or_path is the target as it is."
        },
    )
    finetune_train_layers: int | None = field(
        default=None,
        metadata={
            "help": "With finetune_base: train only the top N decoder layers and the final norm (null: every "
            "parameter); the lower layers and embeddings keep the base model's weights."
        },
    )
    finetune_lora_r: int = field(
        default=0,
        metadata={
            "help": "With finetune_base: fine-tune LoRA adapters of this rank on every linear layer of the trained "
            "layers and merge them into the weights (0: full fine-tuning)."
        },
    )
    model_seed: int = field(default=0, metadata={"help": "Seed of the target and retain models."})
    noise_floor_seed: int = field(
        default=1, metadata={"help": "Seed of the second retain model (noise floor)."}
    )
    use_shipped: bool = field(
        default=True,
        metadata={
            "help": "Use the benchmark models the package ships (sgu_llm/models/shipped, found by cache key and "
            "checked against their recorded weights) instead of fine-tuning them; false: train (or use the cache)."
        },
    )

    def __post_init__(self):
        if self.finetune_check_every < 1:
            raise ValueError(f"finetune_check_every must be at least 1, got {self.finetune_check_every}")
        if self.finetune_train_layers is not None and self.finetune_train_layers < 1:
            raise ValueError(
                f"finetune_train_layers must be at least 1 (or null for all), got {self.finetune_train_layers}"
            )
        if self.finetune_lora_r < 0:
            raise ValueError(f"finetune_lora_r must be 0 (full fine-tuning) or a LoRA rank, got {self.finetune_lora_r}")
        if not 0 < self.finetune_target_accuracy <= 1:
            raise ValueError(
                f"finetune_target_accuracy must be in (0, 1], got {self.finetune_target_accuracy}"
            )
        if self.model_seed == self.noise_floor_seed:
            raise ValueError(
                "noise_floor_seed must differ from model_seed: the noise floor needs a second model"
            )


# The hyperparameters in a tiny model's cache key (later fields enter the key only when they are used).
FINETUNE_HYPER = ("finetune_learning_rate", "finetune_batch_size", "finetune_max_epochs", "finetune_target_accuracy")
CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def _multi_process() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def cached_tokenizer(texts: list[str], vocab_size: int, cache_dir: str) -> Any:
    """Train (or load) a BPE tokenizer on `texts`."""
    key = fingerprint({"format": CACHE_FORMAT, "texts": texts, "vocab_size": vocab_size})
    path = os.path.join(cache_dir, "tokenizers", key[:16])
    with locked(lock_file(cache_dir, "tokenizers", key[:16])):
        if not os.path.exists(os.path.join(path, "tokenizer.json")):
            if _multi_process():
                raise ValueError(
                    "the benchmark's tokenizer is not cached yet and this is a multi-process launch: run "
                    "`sgu-llm finetune RECIPE.yaml` once in a single process first"
                )
            tok = train_tokenizer(texts, vocab_size)
            atomic_dir(path, tok.save_pretrained)
    return PreTrainedTokenizerFast.from_pretrained(path)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    return fingerprint(tokenizer.backend_tokenizer.to_str())


def load_base(base: Any, cache_dir: str) -> tuple[Any, Any]:
    """(model in float32, tokenizer) of the pretrained model `base` (ModelArguments) names."""
    return load_pretrained(
        base.model_name_or_path,
        base.gguf_file,
        dtype="float32",
        trust_remote_code=base.trust_remote_code,
        cache_dir=cache_dir,
        tokenizer_name_or_path=base.tokenizer_name_or_path,
    )


class StopAtAccuracy(TrainerCallback):
    """Stop fine-tuning once teacher-forced answer-token accuracy on the training rows reaches `target`."""

    def __init__(self, tokenizer: Any, rows: list[dict], target: float, check_every: int):
        self.tokenizer, self.rows, self.target, self.check_every = tokenizer, rows, target, check_every
        self.accuracy = 0.0
        self.epochs = 0  # epochs trained at the last check

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = round(state.epoch or 0)
        if epoch % self.check_every:
            return
        self.epochs = epoch
        s = score_rows(model, self.rows, self.tokenizer.pad_token_id, accuracy=True)
        self.accuracy = int(s["correct"].sum()) / max(int(s["tokens"].sum()), 1)
        logger.info("epoch %d: answer-token accuracy %.4f", epoch, self.accuracy)
        if self.accuracy >= self.target:
            control.should_training_stop = True


def model_material(
    role: str, train_set: Any, tokenizer: Any, args: BenchmarkArguments, seed: int, prompt_format: str,
    base: Any, config: dict,
) -> dict:
    """Everything that decides a fine-tuned model: its cache key is the fingerprint of this."""
    material = {
        "format": CACHE_FORMAT,
        "role": role,
        "data": fingerprint([[r["question"], r["answer"]] for r in train_set]),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "config": config,
        "prompt_format": prompt_format,
        "hyper": {k: getattr(args, k) for k in FINETUNE_HYPER},
        "seed": seed,
    }
    if base is not None:
        material["base"] = {"model": base.model_name_or_path, "gguf_file": base.gguf_file}
        material["hyper"].update(
            check_every=args.finetune_check_every,
            train_layers=args.finetune_train_layers,
            lora_r=args.finetune_lora_r,
        )
    return material


def read_entry(path: str, material: dict, role: str) -> tuple[Any, dict] | None:
    """The model stored at `path` when its recorded material is `material` and its config matches; None when
    the folder is missing or holds another model (then it is rebuilt). An unreadable folder is an error naming it."""
    meta_path = os.path.join(path, META_FILE)
    if not os.path.exists(meta_path):
        return None
    try:
        with open(meta_path) as fh:
            meta = json.load(fh)
        with open(os.path.join(path, "config.json")) as fh:
            config = json.load(fh)
        stored = {k: config.get(k) for k in CONFIG_KEYS}
        if meta.get("material") != material or stored != material["config"]:
            logger.warning("the %s model at %s does not match its key (config %s); rebuilding", role, path, stored)
            return None
        return AutoModelForCausalLM.from_pretrained(path), meta
    except Exception as err:  # a truncated or edited entry: say which folder, do not guess
        raise ValueError(
            f"the cached {role} model at {path!r} cannot be read ({type(err).__name__}: {str(err)[:200]}): "
            "delete that folder and run again to rebuild it"
        ) from err


def read_shipped(key: str, material: dict, role: str) -> tuple[Any, dict] | None:
    """The shipped model with this key, if its weights hash to the recorded fingerprint; None otherwise (a
    mismatched or unreadable file is reported, never used)."""
    path = os.path.join(SHIPPED_DIR, f"{role}-{key[:16]}")
    if not os.path.isdir(path):
        return None
    try:
        found = read_entry(path, material, role)
    except (ValueError, OSError) as err:
        logger.warning("the shipped %s model at %s cannot be read (%s); rebuilding it", role, path, err)
        return None
    if found is None:
        return None
    model, meta = found
    actual = weights_fingerprint(model)
    if actual != meta.get("weights"):
        logger.warning(
            "the shipped %s model at %s has weights %s, not the recorded %s (a corrupt or edited file); "
            "rebuilding it", role, path, actual, meta.get("weights"),
        )
        return None
    logger.info("using the shipped %s model %s", role, path)
    return model, meta


def train_entry(
    model: Any, role: str, train_set: Any, tokenizer: Any, args: BenchmarkArguments, seed: int, prompt_format: str,
    base: Any,
) -> tuple[Any, dict]:
    """Fine-tune `model` on `train_set` until the accuracy target (or the epoch cap). Returns (model, meta)."""
    rows = prepare_qa_dataset(train_set, tokenizer, f"{role} fine-tuning", prompt_format=prompt_format).to_list()
    stop = StopAtAccuracy(tokenizer, rows, args.finetune_target_accuracy, args.finetune_check_every)
    start = time.perf_counter()
    if base is not None:
        model = _trainable_part(model, args.finetune_train_layers, args.finetune_lora_r)
    with tempfile.TemporaryDirectory() as tmp:
        finetune(
            model, tokenizer, train_set, tmp, epochs=args.finetune_max_epochs, learning_rate=args.finetune_learning_rate,
            batch_size=args.finetune_batch_size, prompt_format=prompt_format, seed=seed, callbacks=[stop],
        )
    if hasattr(model, "merge_and_unload"):  # LoRA fine-tuning: the cached model is plain weights
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(True)
    meta = {"role": role, "train_seconds": time.perf_counter() - start, "final_accuracy": stop.accuracy,
            "epochs": stop.epochs, "weights": weights_fingerprint(model)}
    logger.info("fine-tuned %s model in %.0f s (accuracy %.4f)", role, meta["train_seconds"], stop.accuracy)
    return model, meta


def write_entry(path: str, model: Any, tokenizer: Any, meta: dict) -> None:
    """Save a fine-tuned model, its tokenizer and its metadata as one cache entry (atomically)."""

    def save(folder: str) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        with open(os.path.join(folder, META_FILE), "w") as fh:
            json.dump(meta, fh, indent=2)

    atomic_dir(path, save)


def cached_finetuned_model(
    role: str,
    train_set: Any,
    tokenizer: Any,
    args: BenchmarkArguments,
    seed: int,
    prompt_format: str = "phi",
    base: Any = None,
    rebuild: bool = False,
) -> tuple[Any, dict]:
    """A model fine-tuned on `train_set`: from the cache, the shipped models or trained here (module docstring).
    Returns (model, metadata with the cache key). `rebuild`: train it here whatever the cache holds, and cache it.

    The model is a tiny Llama built from config, or with `base` (ModelArguments of a pretrained model)
    that model, fine-tuned as `args.finetune_train_layers` and `args.finetune_lora_r` say.
    """
    if base is None:
        model = tiny_llama(tokenizer, args.hidden_size, args.num_layers, args.num_heads, seed=seed)
    else:
        model, _ = load_base(base, args.cache_dir)
    config = {k: model.config.to_dict()[k] for k in CONFIG_KEYS}
    material = model_material(role, train_set, tokenizer, args, seed, prompt_format, base, config)
    key = fingerprint(material)
    path = os.path.join(args.cache_dir, "models", f"{role}-{key[:16]}")
    # Two processes (sweep trials) asking for one model: the second waits, then reads what the first wrote.
    with locked(lock_file(args.cache_dir, "models", f"{role}-{key[:16]}")):
        return _cached_or_trained(model, role, path, key, material, train_set, tokenizer, args, seed, prompt_format, base, rebuild)


def _cached_or_trained(
    model: Any, role: str, path: str, key: str, material: dict, train_set: Any, tokenizer: Any,
    args: BenchmarkArguments, seed: int, prompt_format: str, base: Any, rebuild: bool,
) -> tuple[Any, dict]:
    """`cached_finetuned_model` under its lock: the cache entry, the shipped model, or trained here."""
    found = None if rebuild else read_entry(path, material, role)
    if found is None and args.use_shipped and not rebuild:
        found = read_shipped(key, material, role)
        if found is not None:  # into the cache too: every model of a run is then where the cache says
            write_entry(path, found[0], tokenizer, found[1])
    if found is not None:
        return found[0], {**found[1], "key": key}
    if _multi_process():  # every process would train (and write) the same entry at once
        raise ValueError(
            f"the benchmark's {role} model is not cached yet and this is a multi-process launch: run "
            "`sgu-llm finetune RECIPE.yaml` once in a single process first, then launch again"
        )
    model, meta = train_entry(model, role, train_set, tokenizer, args, seed, prompt_format, base)
    meta.update(material=material, key=key)
    write_entry(path, model, tokenizer, meta)
    return model, meta


def shipped_weights(role: str, key: str) -> str | None:
    """The recorded weights fingerprint of the shipped model with this key (None: none is shipped)."""
    path = os.path.join(SHIPPED_DIR, f"{role}-{key[:16]}", META_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh).get("weights")


def _trainable_part(model: Any, train_layers: int | None, lora_r: int) -> Any:
    """Freeze all but the top `train_layers` decoder layers (and the final norm); with `lora_r`, wrap the
    trained layers' linear modules in LoRA adapters instead of training their weights."""
    layers = model.get_decoder().layers
    n = len(layers) if train_layers is None else min(train_layers, len(layers))
    trained = list(range(len(layers) - n, len(layers)))
    if lora_r:
        from peft import LoraConfig, get_peft_model

        # The linear modules of a decoder layer, by name (PEFT takes layers_to_transform only with names).
        names = sorted({n.rsplit(".", 1)[-1] for n, m in layers[0].named_modules() if isinstance(m, torch.nn.Linear)})
        cfg = LoraConfig(
            r=lora_r, lora_alpha=2 * lora_r, target_modules=names, layers_to_transform=trained, task_type="CAUSAL_LM"
        )
        return get_peft_model(model, cfg)
    if train_layers is not None:
        for p in model.parameters():
            p.requires_grad_(False)
        for i in trained:
            layers[i].requires_grad_(True)
        norm = getattr(model.get_decoder(), "norm", None)
        if norm is not None:
            norm.requires_grad_(True)
    return model


def benchmark_tokenizer(
    data: dict[str, Any], args: BenchmarkArguments, prompt_format: str = "phi", base: Any = None
) -> Any:
    """A BPE tokenizer trained on the benchmark's texts, or with `base` the pretrained model's own."""
    if base is not None:
        _, tokenizer = load_base(base, args.cache_dir)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    texts = set()
    for key in ("retain", "forget", "holdout", "real_authors", "world_facts"):
        if key in data:
            texts |= {build_prompt(r["question"], prompt_format=prompt_format) + r["answer"] for r in data[key]}
    # Sorted: every forget/retain split of one data set gets the same tokenizer.
    return cached_tokenizer(sorted(texts), args.vocab_size, args.cache_dir)


def benchmark_models(
    data: dict[str, Any],
    args: BenchmarkArguments,
    roles: tuple[str, ...] = ("target", "retain", "noise_floor"),
    prompt_format: str = "phi",
    base: Any = None,
    rebuild: bool = False,
) -> tuple[Any, dict[str, Any], dict[str, dict]]:
    """The tokenizer and the fine-tuned (cached) models for `roles`, trained one after the other.

    `base` (ModelArguments) names the model to fine-tune; it is used when it is a pretrained model and
    `args.finetune_base` is set, and otherwise each model is a tiny Llama trained from scratch.

    `rebuild`: train every model here (and cache it) even when the cache or the shipped models hold it.

    Models are keyed by what they train on, not by role: the noise floor of model seed s (a retain
    model with `noise_floor_seed`) is the retain model of seed s + 1 when `noise_floor_seed = s + 1`,
    and the target is shared by every forget split of one data set.
    """
    if base is not None and (is_benchmark_model(base.model_name_or_path) or not args.finetune_base):
        base = None
    tokenizer = benchmark_tokenizer(data, args, prompt_format, base)
    sets = training_sets(data)
    plan = {
        "target": ("target", args.model_seed),
        "retain": ("retain", args.model_seed),
        "noise_floor": ("retain", args.noise_floor_seed),
    }
    models, metas = {}, {}
    for role in roles:
        train_key, seed = plan[role]
        models[role], metas[role] = cached_finetuned_model(
            train_key, sets[train_key], tokenizer, args, seed, prompt_format, base, rebuild
        )
    return tokenizer, models, metas
