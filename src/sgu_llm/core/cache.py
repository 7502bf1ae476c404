"""Content fingerprints and the on-disk cache: one place for what `~/.cache/sgu-llm` holds and how it is keyed.

A cache entry is a folder named by a hash of everything that determines it, written atomically
(`sgu_llm.core.files`), so a crash or a second writer never leaves half an entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from sgu_llm.core.files import atomic_dir, locked


def default_cache_dir() -> str:
    """`$SGU_LLM_CACHE`, else `~/.cache/sgu-llm`."""
    return os.environ.get("SGU_LLM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "sgu-llm"))


def fingerprint(obj: Any) -> str:
    """sha256 of `obj` as sorted JSON (anything JSON cannot hold is written with `str`).

    Example:
        >>> fingerprint({"b": 1, "a": 2}) == fingerprint({"a": 2, "b": 1})
        True
    """
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def weights_fingerprint(model: Any) -> str:
    """sha256 (16 hex digits) of a model's weights, bit for bit."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def lock_file(cache_dir: str, kind: str, name: str) -> str:
    """Where the lock of the entry `cache_dir/kind/name` lives (`sgu_llm.core.files.locked`)."""
    return os.path.join(cache_dir, "locks", f"{kind}-{name}.lock")


def cached_json(cache_dir: str, kind: str, material: dict, compute: Any, filename: str = "result.json") -> Any:
    """`compute()`'s JSON result, cached under `cache_dir/kind/<hash of material>` (atomic write)."""
    key = fingerprint(material)[:16]
    folder = os.path.join(cache_dir, kind, key)
    path = os.path.join(folder, filename)
    with locked(lock_file(cache_dir, kind, key)):  # a second process computing the same entry waits, then reads it
        if os.path.exists(path):
            with open(path) as fh:
                return json.load(fh)
        result = compute()

        def save(tmp: str) -> None:
            with open(os.path.join(tmp, filename), "w") as fh:
                json.dump(result, fh)

        atomic_dir(folder, save)
    return json.loads(json.dumps(result))  # the same floats a cached run reads back
