"""Atomic writes: a file or folder appears whole or not at all, so a crash never leaves half an output.

Every JSON, report, model card and cache entry a run writes goes through here, and `locked` keeps two
processes (two trials of a sweep on one machine or on a shared filesystem) from building the same cache entry
at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any


def write_text(path: str, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "a.txt")
        >>> write_text(p, "hello"); open(p).read()
        'hello'
    """
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would honour the umask
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str, obj: Any, indent: int | None = 1) -> None:
    """`json.dump` through `write_text`."""
    write_text(path, json.dumps(obj, indent=indent))


def atomic_dir(target: str, save: Any) -> None:
    """Build a folder with `save(tmp_folder)` and move it in place (replacing an old one)."""
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(target) or ".", prefix=".tmp-")
    try:
        save(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


@contextlib.contextmanager
def locked(lock_file: str) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (created if missing) for the duration of the block.

    The second process to ask waits until the first has finished, so a cache entry is built once and the
    waiter reads it. `flock` locks are released when the holder dies, so a killed process never leaves an
    entry locked. Lock files live apart from what they guard (`cache_dir/locks/`), so listing a cache folder
    shows entries only.

    Example:
        >>> import tempfile, os
        >>> with locked(os.path.join(tempfile.mkdtemp(), "locks", "entry")):
        ...     pass
    """
    os.makedirs(os.path.dirname(lock_file) or ".", exist_ok=True)
    with open(lock_file, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
