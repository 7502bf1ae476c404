"""Where a sweep's trials run: in this process one after another (`LocalBackend`, the default) or as Ray tasks
(`RayBackend`, `sgu-llm sweep CONFIG --backend ray`).

A trial is one unit of work with no writes of its own: a model seed's fine-tunings and baseline evaluations
(`models`), one unlearning run (`run`) or one attack repeat (`attack`). It returns its record; the driver
(`sgu_llm.experiments.sweep.runner`) writes every file, so the output directory, the resume and the reports are
the same whichever backend ran the trials. Both backends yield `(trial, result)` as trials finish and drive the
same `Progress` bar.

Ray: each trial is a task that asks for `trial_cpus` CPUs and `trial_gpus` GPUs (Ray sets
`CUDA_VISIBLE_DEVICES` and `OMP_NUM_THREADS` for it). At most as many trials as the cluster can hold are in
flight, so "running" in the progress bar is what runs. A trial whose worker process dies (killed, out of memory,
node lost) is submitted again, at most `max_retries` times; a trial that raises (a bad config, a bug) fails the
sweep at once with its error, the other trials in flight cancelled. Nothing a dead trial did is kept: it wrote
nothing.

With `trial_processes` > 1 an unlearning run is an `accelerate launch` job of that many processes
(`python -m sgu_llm.experiments.sweep.trial`) over the devices the trial was given.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from sgu_llm.core.cache import fingerprint

# Environment variables a trial runs with, whichever machine runs it.
TRIAL_ENV = ("SGU_LLM_CACHE", "SGU_LLM_QUIET", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass(frozen=True)
class Trial:
    """One unit of a sweep: `kind` is "models", "run" or "attack"; `inputs` is what the driver hands it (the seed's
    baseline evaluations, a stored curve), so a worker reads nothing the driver writes."""

    kind: str
    split: str
    seed: int
    method: str = ""
    point: tuple = (0.0, ())
    inputs: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self) -> str:
        lr, setting = self.point
        what = f" {self.method} lr{lr:g}" + "".join(f" {k}={v:g}" for k, v in setting) if self.method else ""
        return f"{self.kind} {self.split} seed{self.seed}{what}"


class Progress:
    """One bar over every trial of a sweep: finished / running / failed / retried and the time left (tqdm's
    estimate from the finished trials' rate; trials are added stage by stage, so early estimates are low)."""

    def __init__(self, enabled: bool = True):
        self.counts = {"finished": 0, "running": 0, "failed": 0, "retried": 0}
        self.bar = tqdm(total=0, unit="trial", desc="sweep", disable=not enabled, dynamic_ncols=True, leave=True)

    def add(self, n: int) -> None:
        self.bar.total += n
        self.bar.refresh()

    def started(self) -> None:
        self._count("running", 1)

    def finished(self) -> None:
        self.counts["running"] -= 1
        self._count("finished", 1)
        self.bar.update(1)

    def failed(self) -> None:
        self.counts["running"] -= 1
        self._count("failed", 1)

    def retried(self) -> None:
        self._count("retried", 1)

    def write(self, message: str) -> None:
        """Print a line above the bar."""
        if self.bar.disable:
            print(message, flush=True)
        else:
            self.bar.write(message)

    def close(self) -> None:
        self.bar.close()

    def _count(self, key: str, n: int) -> None:
        self.counts[key] += n
        self.bar.set_postfix({k: v for k, v in self.counts.items() if k != "finished"}, refresh=True)


def trial_env() -> dict[str, str]:
    """The driver's values of `TRIAL_ENV` (a worker on another machine gets the same cache and settings)."""
    return {k: os.environ[k] for k in TRIAL_ENV if k in os.environ}


_WORKER: dict = {}  # one sweep object per worker process (its loaded seed stays loaded between trials)


def run_trial(sweep_class: type, cfg: Any, trial: Trial, env: dict[str, str], sweep: Any = None) -> Any:
    """What runs one trial: `sweep.execute(trial)` (in a worker, one `sweep_class(cfg)` per process), or with
    `cfg.trial_processes` > 1 and an unlearning run, the same in an `accelerate launch` job (`launch_trial`)."""
    if trial.kind == "run" and cfg.trial_processes > 1:
        return launch_trial(sweep_class, cfg, trial, env)
    if sweep is None:  # a Ray worker
        os.environ.update(env)
        key = (sweep_class, fingerprint(cfg.__dict__))
        if key not in _WORKER:
            _WORKER.clear()
            _WORKER[key] = sweep_class(cfg, log=lambda message: None)
        sweep = _WORKER[key]
    return sweep.execute(trial)


def launch_trial(sweep_class: type, cfg: Any, trial: Trial, env: dict[str, str]) -> Any:
    """Run one trial as `accelerate launch --num_processes cfg.trial_processes` over the devices this process was
    given; the main process's result comes back through a file."""
    with tempfile.TemporaryDirectory() as tmp:
        spec, result = os.path.join(tmp, "trial.pkl"), os.path.join(tmp, "result.pkl")
        with open(spec, "wb") as fh:
            pickle.dump((sweep_class, cfg, trial), fh)
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(cfg.trial_processes)]
        if cfg.accelerate_config:
            command += ["--config_file", cfg.accelerate_config]
        command += ["-m", "sgu_llm.experiments.sweep.trial", spec, result]
        proc = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(result):
            raise RuntimeError(f"{trial.name}: `{' '.join(command)}` failed:\n{proc.stderr[-3000:]}")
        with open(result, "rb") as fh:
            return pickle.load(fh)


class LocalBackend:
    """Trials in this process, in order (the sweep object's loaded seed is reused between them)."""

    name = "local"

    def run(self, sweep: Any, trials: Iterable[Trial], progress: Progress) -> Iterator[tuple[Trial, Any]]:
        trials = list(trials)
        progress.add(len(trials))
        for trial in trials:
            progress.started()
            try:
                result = run_trial(type(sweep), sweep.cfg, trial, trial_env(), sweep)
            except BaseException:
                progress.failed()
                raise
            progress.finished()
            yield trial, result


class RayBackend:
    """Trials as Ray tasks on a local Ray (`ray.init()`) or a running cluster (`address`)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, log: Any = print):
        try:
            import ray  # optional: the `ray` extra
        except ImportError:
            raise ValueError(
                "--backend ray needs Ray, which is an optional extra: pip install 'sgu-llm[ray]'"
            ) from None
        self.ray, self.log = ray, log
        if not ray.is_initialized():
            if address:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            else:
                ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        self.task = ray.remote(run_trial)

    def slots(self, cfg: Any) -> int:
        """How many trials the cluster holds at once with each asking for `trial_cpus` CPUs and `trial_gpus` GPUs."""
        have = self.ray.cluster_resources()
        fits = [int(have.get("CPU", 0) // cfg.trial_cpus)] if cfg.trial_cpus else []
        if cfg.trial_gpus:
            fits.append(int(have.get("GPU", 0) // cfg.trial_gpus))
        n = min(fits) if fits else 1
        if n < 1:
            raise ValueError(
                f"no node of this Ray cluster ({have}) has trial_cpus={cfg.trial_cpus} CPUs and "
                f"trial_gpus={cfg.trial_gpus} GPUs free for one trial: lower them in the sweep config"
            )
        return n

    def run(self, sweep: Any, trials: Iterable[Trial], progress: Progress) -> Iterator[tuple[Trial, Any]]:
        ray, cfg = self.ray, sweep.cfg
        queue = list(trials)
        progress.add(len(queue))
        options = {"num_cpus": cfg.trial_cpus, "num_gpus": cfg.trial_gpus, "max_retries": 0, "retry_exceptions": False}
        env, slots = trial_env(), self.slots(cfg)
        pending: dict = {}  # ObjectRef -> (trial, attempt)

        def submit(trial: Trial, attempt: int) -> None:
            ref = self.task.options(name=trial.name, **options).remote(type(sweep), cfg, trial, env)
            pending[ref] = (trial, attempt)

        try:
            while queue or pending:
                while queue and len(pending) < slots:
                    submit(queue.pop(0), 0)
                    progress.started()
                [ref], _ = ray.wait(list(pending), num_returns=1)
                trial, attempt = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as err:  # the trial raised: its own error, no retry
                    progress.failed()
                    cause = err.cause if getattr(err, "cause", None) is not None else err
                    if isinstance(cause, ValueError):
                        raise ValueError(f"{trial.name}: {cause}") from None
                    raise RuntimeError(f"{trial.name} failed:\n{err}") from None
                except ray.exceptions.RayError as err:  # the worker died (killed, out of memory, node lost)
                    if attempt >= cfg.max_retries:
                        progress.failed()
                        raise RuntimeError(
                            f"{trial.name}: its worker died {attempt + 1} times (max_retries={cfg.max_retries}); "
                            f"last: {type(err).__name__}: {err}"
                        ) from None
                    progress.retried()
                    progress.write(f"[sweep] {trial.name}: worker died ({type(err).__name__}); retry {attempt + 1}")
                    submit(trial, attempt + 1)
                    continue
                progress.finished()
                yield trial, result
        finally:
            for ref in pending:  # a failed sweep leaves nothing running
                ray.cancel(ref, force=True)


def make_backend(name: str, address: str | None = None, num_cpus: int | None = None) -> Any:
    """`local` (default) or `ray`."""
    if name == "local":
        if address:
            raise ValueError("--ray_address is for --backend ray")
        return LocalBackend()
    if name == "ray":
        return RayBackend(address, num_cpus)
    raise ValueError(f"unknown --backend {name!r}: use local or ray")
