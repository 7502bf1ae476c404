"""What a run writes and reads back: the output folder's checks, resuming, and secrets kept out of files."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import tempfile
from typing import Any

import torch
from transformers.trainer_utils import get_last_checkpoint

# Files whose presence means output_dir already holds a run we must not overwrite silently.
RUN_MARKERS = (
    "trainer_state.json",
    "config.json",
    "adapter_config.json",
    "model.safetensors",
    "adapter_model.safetensors",
    "pytorch_model.bin",
)


@contextlib.contextmanager
def tokens_masked(args: Any):
    """Within the block, every `*_token` string field of `args` reads `<FIELD_NAME>` (as `to_dict()` masks
    them), so no file written from `args` (training_args.bin) holds a secret."""
    saved = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(args)
        if f.name.endswith("_token") and isinstance(getattr(args, f.name, None), str)
    }
    try:
        for name in saved:
            object.__setattr__(args, name, f"<{name.upper()}>")
        yield args
    finally:
        for name, value in saved.items():
            object.__setattr__(args, name, value)


def resume_argument(args: Any) -> str | bool | None:
    """`trainer.train(resume_from_checkpoint=...)` from the config field: 'true' or 'last' mean the last
    checkpoint in output_dir, anything else is a checkpoint folder (checked to exist)."""
    value = args.resume_from_checkpoint
    if value is None or value is False or str(value).lower() in ("", "false", "none"):
        return None
    if value is True or str(value).lower() in ("true", "last"):
        if not os.path.isdir(args.output_dir) or get_last_checkpoint(args.output_dir) is None:
            raise ValueError(
                f"resume_from_checkpoint=true but {args.output_dir!r} holds no checkpoint-* folder: set save_strategy "
                "(e.g. 'epoch') on the run to resume, or start without resume_from_checkpoint"
            )
        check_checkpoint_matches(get_last_checkpoint(args.output_dir), args)
        return True
    if not os.path.isdir(value):
        raise ValueError(f"resume_from_checkpoint={value!r} is not a checkpoint folder (nothing was written)")
    check_checkpoint_matches(value, args)
    return value


def check_checkpoint_matches(folder: str, args: Any) -> None:
    """Refuse to resume from a checkpoint written by another method (config class or selective function)."""
    path = os.path.join(folder, "training_args.bin")
    if not os.path.exists(path):
        return
    saved = torch.load(path, weights_only=False)  # the Trainer's own pickle of its arguments
    mine = (type(args).__name__, getattr(args, "selective_function", None))
    theirs = (type(saved).__name__, getattr(saved, "selective_function", None))
    if mine != theirs:
        raise ValueError(
            f"checkpoint {folder!r} was written by {theirs[0]}"
            + (f" (selective_function={theirs[1]!r})" if theirs[1] else "")
            + f", but this run is {mine[0]}"
            + (f" (selective_function={mine[1]!r})" if mine[1] else "")
            + ": resume with the method that wrote it, or start a new run without resume_from_checkpoint"
        )


def _check_writable(folder: str) -> None:
    """Create `folder` if needed and write (then remove) a probe file in it."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise ValueError(
            f"output_dir {folder!r} cannot be written ({type(err).__name__}: {err.strerror or err}): choose a "
            "folder you can write to"
        ) from err


def check_output_dir(args: Any) -> None:
    """Refuse an output_dir that already holds a run unless asked to overwrite or resume, or that cannot be
    written (checked before any work, so a long run does not fail at its end)."""
    out = args.output_dir
    if out:
        _check_writable(out)
    if not out or not os.path.isdir(out) or args.overwrite_output_dir or args.resume_from_checkpoint:
        return
    found = [m for m in RUN_MARKERS if os.path.exists(os.path.join(out, m))]
    found += sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "checkpoint-*")))
    if found:
        raise ValueError(
            f"output_dir {out!r} already holds a previous run ({', '.join(found[:4])}); nothing was written. "
            "Choose another output_dir, pass overwrite_output_dir=True to replace it, or resume_from_checkpoint."
        )


