"""The embedded benchmark's models: tokenizer, target, retain and noise-floor models, cached by content hash.

The target model is fine-tuned on every author plus the general sets; the
retain model on the retain split plus the general sets; a second retain model
with another seed gives the benchmark's noise floor. Each is cached under
`cache_dir` by a hash of its training data, tokenizer, model config,
hyperparameters and seed: a second run reuses it, and any change rebuilds it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from sgu_llm.cache import default_cache_dir, fingerprint
from sgu_llm.files import atomic_dir

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when what a cache entry means changes
META_FILE = "sgu_llm_cache.json"


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
    retain_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "With a Hub/local target model: the retain model whose forget-set truth ratios are the "
            "forget-quality reference (builtin models train their own)."
        },
    )
    retain_eval_file: str | None = field(
        default=None,
        metadata={
            "help": "Instead of a retain model: an eval JSON (sgu-llm eval output) of one, as the reference "
            "framework's saved logs."
        },
    )
    noise_floor_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "With a Hub/local target: a second retain model (another seed) for the noise floor."
        },
    )
    eval_batch_size: int = field(default=64, metadata={"help": "Batch size of evaluation and generation."})
    max_new_tokens: int = field(default=200, metadata={"help": "Greedy generation length for ROUGE."})
    attacks: bool = field(
        default=True,
        metadata={
            "help": "After unlearning, attack the unlearned and the retain model (relearning on half of the forget "
            "set; int8 and int4 weight quantization) and report what comes back (metrics.json 'attacks')."
        },
    )
    attack_relearn_steps: int = field(default=10, metadata={"help": "AdamW steps of the relearning attack."})
    attack_relearn_learning_rate: float = field(
        default=1e-3, metadata={"help": "Learning rate of the relearning attack."}
    )
    sweep_results: str = field(
        default="",
        metadata={
            "help": "A sweep's results.json (e.g. docs/results.json): its attack rows for this model and forget "
            "split (every method of the sweep, spread over model seeds; `attack_splits` in the sweep) join this "
            "run's attacks in metrics.json ('attacks.sweep') and the report. A missing file is noted, not an error."
        },
    )
    eval_each_epoch: bool = field(
        default=True,
        metadata={"help": "Evaluate forget quality and probabilities after every unlearning epoch."},
    )

    def __post_init__(self):
        if self.attack_relearn_steps < 1:
            raise ValueError(f"attack_relearn_steps must be at least 1, got {self.attack_relearn_steps}")
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


def _rows(ds: Any) -> list[list[str]]:
    return [[r["question"], r["answer"]] for r in ds]


def cached_tokenizer(texts: list[str], vocab_size: int, cache_dir: str) -> Any:
    """Train (or load) a BPE tokenizer on `texts`."""
    from transformers import PreTrainedTokenizerFast

    from sgu_llm.models import train_tokenizer

    key = fingerprint({"format": CACHE_FORMAT, "texts": texts, "vocab_size": vocab_size})
    path = os.path.join(cache_dir, "tokenizers", key[:16])
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
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
    from sgu_llm.pretrained import load_pretrained

    return load_pretrained(
        base.model_name_or_path,
        base.gguf_file,
        dtype="float32",
        trust_remote_code=base.trust_remote_code,
        cache_dir=cache_dir,
        tokenizer_name_or_path=base.tokenizer_name_or_path,
    )


def _accuracy_callback(tokenizer: Any, data: Any, target: float, check_every: int) -> Any:
    from transformers import TrainerCallback

    from sgu_llm.evaluation.scoring import score_rows

    rows = data.to_list()

    class StopAtAccuracy(TrainerCallback):
        """Stop fine-tuning once teacher-forced answer-token accuracy on the training data reaches `target`."""

        accuracy = 0.0
        epochs = 0  # epochs trained at the last check

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            epoch = round(state.epoch or 0)
            if epoch % check_every:
                return
            self.epochs = epoch
            s = score_rows(model, rows, tokenizer.pad_token_id, accuracy=True)
            right, total = int(s["correct"].sum()), int(s["tokens"].sum())
            self.accuracy = right / max(total, 1)
            logger.info("epoch %d: answer-token accuracy %.4f", epoch, self.accuracy)
            if self.accuracy >= target:
                control.should_training_stop = True

    return StopAtAccuracy()


def cached_finetuned_model(
    role: str,
    train_set: Any,
    tokenizer: Any,
    args: BenchmarkArguments,
    seed: int,
    prompt_format: str = "phi",
    base: Any = None,
) -> tuple[Any, dict]:
    """Fine-tune a model on `train_set` (or load the cached one). Returns (model, cache metadata).

    The model is a tiny Llama built from config, or with `base` (ModelArguments of a pretrained model)
    that model, fine-tuned as `args.finetune_train_layers` and `args.finetune_lora_r` say.
    """
    from transformers import AutoModelForCausalLM

    from sgu_llm.data.pairing import prepare_qa_dataset
    from sgu_llm.finetune import finetune
    from sgu_llm.models import tiny_llama

    if base is None:
        model = tiny_llama(tokenizer, args.hidden_size, args.num_layers, args.num_heads, seed=seed)
    else:
        model, _ = load_base(base, args.cache_dir)
    expected_config = {
        k: model.config.to_dict()[k]
        for k in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
        )
    }
    material = {
        "format": CACHE_FORMAT,
        "role": role,
        "data": fingerprint(_rows(train_set)),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "config": expected_config,
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
    key = fingerprint(material)
    path = os.path.join(args.cache_dir, "models", f"{role}-{key[:16]}")
    meta_path = os.path.join(path, META_FILE)
    if os.path.exists(meta_path):
        try:
            with open(meta_path) as fh:
                meta = json.load(fh)
            with open(os.path.join(path, "config.json")) as fh:
                stored = json.load(fh)
            actual = {k: stored.get(k) for k in expected_config}
            if meta.get("material") == material and actual == expected_config:
                logger.info("using cached %s model %s", role, path)
                return AutoModelForCausalLM.from_pretrained(path), meta
        except Exception as err:  # a truncated or edited entry: say which folder, do not guess
            raise ValueError(
                f"the cached {role} model at {path!r} cannot be read ({type(err).__name__}: {str(err)[:200]}): "
                "delete that folder and run again to rebuild it"
            ) from err
        logger.warning(
            "cached %s model at %s does not match its key (config %s, expected %s); rebuilding",
            role,
            path,
            actual,
            expected_config,
        )

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Every process would train (and write) the same entry at once.
        raise ValueError(
            f"the benchmark's {role} model is not cached yet and this is a multi-process launch: run "
            "`sgu-llm finetune RECIPE.yaml` once in a single process first, then launch again"
        )
    data = prepare_qa_dataset(train_set, tokenizer, f"{role} fine-tuning", prompt_format=prompt_format)
    stop = _accuracy_callback(tokenizer, data, args.finetune_target_accuracy, args.finetune_check_every)
    import time

    start = time.perf_counter()
    if base is not None:
        model = _trainable_part(model, args.finetune_train_layers, args.finetune_lora_r)
    with tempfile.TemporaryDirectory() as tmp:
        finetune(
            model,
            tokenizer,
            train_set,
            tmp,
            epochs=args.finetune_max_epochs,
            learning_rate=args.finetune_learning_rate,
            batch_size=args.finetune_batch_size,
            prompt_format=prompt_format,
            seed=seed,
            callbacks=[stop],
        )
    if hasattr(model, "merge_and_unload"):  # LoRA fine-tuning: the cached model is plain weights
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(True)
    meta = {
        "material": material,
        "key": key,
        "role": role,
        "train_seconds": time.perf_counter() - start,
        "final_accuracy": stop.accuracy,
        "epochs": stop.epochs,
    }

    def save(folder: str) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        with open(os.path.join(folder, META_FILE), "w") as fh:
            json.dump(meta, fh, indent=2)

    atomic_dir(path, save)
    logger.info(
        "fine-tuned %s model in %.0f s (accuracy %.4f), cached at %s",
        role,
        meta["train_seconds"],
        stop.accuracy,
        path,
    )
    return model, meta


def _trainable_part(model: Any, train_layers: int | None, lora_r: int) -> Any:
    """Freeze all but the top `train_layers` decoder layers (and the final norm); with `lora_r`, wrap the
    trained layers' linear modules in LoRA adapters instead of training their weights."""
    layers = model.get_decoder().layers
    n = len(layers) if train_layers is None else min(train_layers, len(layers))
    trained = list(range(len(layers) - n, len(layers)))
    if lora_r:
        import torch
        from peft import LoraConfig, get_peft_model

        # The linear modules of a decoder layer, by name (PEFT takes layers_to_transform only with names).
        names = sorted({n.rsplit(".", 1)[-1] for n, m in layers[0].named_modules() if isinstance(m, torch.nn.Linear)})
        cfg = LoraConfig(
            r=lora_r,
            lora_alpha=2 * lora_r,
            target_modules=names,
            layers_to_transform=trained,
            task_type="CAUSAL_LM",
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


# ---- the benchmark's data and models -------------------------------------------------------------


def load_benchmark_data(script: Any) -> dict[str, Any]:
    """Every split a run needs, from `script.dataset_name` (synthetic, a Hub id or a local folder).

    Keys: `forget`, `retain` (training splits), `forget_perturbed`, `retain_perturbed`, `real_authors`,
    `world_facts` and, where the source has one, `holdout`.
    """
    from sgu_llm.data.tofu import check_disjoint, load_tofu

    kw = script.synthetic_kwargs()

    def load(config: str, file: str | None = None) -> Any:
        return load_tofu(config, source=file or script.dataset_name, **kw)

    data = {
        "forget": load(script.forget_split, script.forget_file),
        "retain": load(script.retain_split, script.retain_file),
        "forget_perturbed": load(f"{script.forget_split}_perturbed"),
        "retain_perturbed": load("retain_perturbed"),
        "real_authors": load("real_authors_perturbed"),
        "world_facts": load("world_facts_perturbed"),
    }
    if script.holdout_split:
        data["holdout"] = load(script.holdout_split)
    check_disjoint(data["forget"], data["retain"])
    return data


def _general(data: dict[str, Any]) -> Any:
    import datasets

    return datasets.concatenate_datasets(
        [data[k].select_columns(["question", "answer"]) for k in ("real_authors", "world_facts")]
    )


def unlearning_retain_set(data: dict[str, Any], with_general: bool) -> Any:
    """The retain set unlearning pairs with the forget set: the retain split, plus the general sets
    (real authors, world facts; question and answer) when `with_general`."""
    import datasets

    if not with_general:
        return data["retain"]
    qa = ["question", "answer"]
    return datasets.concatenate_datasets([data["retain"].select_columns(qa), _general(data)])


def training_sets(data: dict[str, Any]) -> dict[str, Any]:
    """The target trains on forget + retain + general sets; the retain models on retain + general."""
    import datasets

    general = _general(data)
    qa = ["question", "answer"]

    def canonical(*parts: Any) -> Any:
        # Sorted rows: the target of forget01, forget05 and forget10 is one model (one cache entry).
        rows = sorted({(r["question"], r["answer"]) for part in parts for r in part.select_columns(qa)})
        return datasets.Dataset.from_dict({"question": [q for q, _ in rows], "answer": [a for _, a in rows]})

    return {
        "target": datasets.concatenate_datasets([canonical(data["retain"], data["forget"]), general]),
        "retain": datasets.concatenate_datasets([canonical(data["retain"]), general]),
    }


def benchmark_tokenizer(
    data: dict[str, Any], args: BenchmarkArguments, prompt_format: str = "phi", base: Any = None
) -> Any:
    """A BPE tokenizer trained on the benchmark's texts, or with `base` the pretrained model's own."""
    from sgu_llm.data.prompts import build_prompt

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
) -> tuple[Any, dict[str, Any], dict[str, dict]]:
    """The tokenizer and the fine-tuned (cached) models for `roles`, trained one after the other.

    `base` (ModelArguments) names the model to fine-tune; it is used when it is a pretrained model and
    `args.finetune_base` is set, and otherwise each model is a tiny Llama trained from scratch.

    Models are cached by what they train on, not by role: the noise floor of model seed s (a retain
    model with `noise_floor_seed`) is the retain model of seed s + 1 when `noise_floor_seed = s + 1`,
    and the target is shared by every forget split of one data set.
    """
    from sgu_llm.pretrained import is_benchmark_model

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
            train_key, sets[train_key], tokenizer, args, seed, prompt_format, base
        )
    return tokenizer, models, metas
