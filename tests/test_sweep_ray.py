"""The sweep on Ray (`--backend ray`): the same records and results as in this process, and a worker killed
during a trial costs a retry, not a record."""

import json
import os
import signal
import sys
import threading
import time

import pytest
import torch
from test_sweep import TINY  # the tiny sweep of tests/test_sweep.py

from sgu_llm.experiments.sweep import Sweep, SweepConfig, collect_records, write_results
from sgu_llm.experiments.sweep.backends import Progress, RayBackend

ray = pytest.importorskip("ray", reason="the `ray` extra: pip install 'sgu-llm[ray]'")

SMALL = {**TINY, "learning_rates": [1e-3, 3e-4]}  # 2 methods x 2 learning rates x 1 model seed


TIMED = ("unlearn_seconds", "scoring_seconds", "evaluation_seconds")  # what differs between two runs of the same trial: its wall time


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMED} for r in rows]


def sweep(tmp_path, name, backend=None, progress=None):
    cfg = SweepConfig(**SMALL, output_dir=str(tmp_path / name / "runs"), results_dir=str(tmp_path / name / "docs"))
    s = Sweep(cfg, log=lambda m: None, backend=backend, progress=progress)
    records = s.run_grid()
    write_results(cfg, records, "sgu-llm sweep small.yaml")
    return cfg, records, json.loads((tmp_path / name / "docs" / "results.json").read_text())


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The in-process sweep: 2 methods x 2 learning rates x 1 model seed."""
    tmp = tmp_path_factory.mktemp("sweeps")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray trial (trial_cpus 1): float sums split over threads differ in the last bits
    try:
        start = time.perf_counter()
        out = sweep(tmp, "local")
        return tmp, out, time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backend():
    b = RayBackend(num_cpus=2)  # a local Ray with 2 CPU workers (each trial asks for 1 CPU)
    yield b
    ray.shutdown()


def same_runs(a, b):
    """Per run: the same curve (forget quality and holdout KS at every epoch) and the same selected points."""
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert (x["method"], x["learning_rate"]) == (y["method"], y["learning_rate"])
        assert x["curve"] == y["curve"]
        for sel in x["selections"]:
            a_, b_ = x["selections"][sel], y["selections"][sel]
            assert a_ == b_, {k: (a_.get(k), b_.get(k)) for k in set(a_) | set(b_) if a_.get(k) != b_.get(k)}


@pytest.mark.slow
def test_ray_sweep_equals_the_in_process_one_and_survives_a_killed_worker(local, backend, tmp_path):
    """The small sweep on a local Ray with 2 workers, with the worker of the first unlearning run that starts
    killed (SIGKILL) mid-trial: the sweep finishes, that trial ran again, the records and results.json equal
    the in-process sweep's, and the output folder holds exactly one whole record per run (no temporary or
    partial file)."""
    _, (_, records, results), local_seconds = local
    start = time.perf_counter()
    killed = []

    def kill_first_run():
        deadline = time.time() + 300
        while not killed and time.time() < deadline:
            for pid in os.listdir("/proc"):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        title = fh.read()
                except OSError:
                    continue
                if pid.isdigit() and title.startswith(b"ray::run forget10"):
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(title.split(b"\0")[0].decode())
                    return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_first_run, daemon=True)
    watcher.start()
    progress = Progress(enabled=False)
    cfg, ray_records, ray_results = sweep(tmp_path, "killed", backend, progress)
    watcher.join(timeout=1)
    print(f"\nsmall sweep: in process {local_seconds:.1f} s, Ray with 2 workers {time.perf_counter() - start:.1f} s")
    assert killed, "no unlearning trial was seen running"
    assert progress.counts == {"finished": 5, "running": 0, "failed": 0, "retried": 1}  # 1 models trial + 4 runs
    same_runs(records, ray_records)
    assert untimed(ray_results) == untimed(results)
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "killed" / "runs").rglob("*") if p.is_file())
    names = [str(p) for p in files]
    assert not [n for n in names if ".tmp" in n]
    runs = [n for n in names if os.path.basename(n).startswith("lr")]
    assert len(runs) == len(set(runs)) == 4
    assert all(json.loads((tmp_path / n).read_text())["selections"] for n in runs)  # each whole
    key = lambda r: (r["method"], r["learning_rate"])  # noqa: E731
    assert untimed(sorted(collect_records(cfg), key=key)) == untimed(sorted(ray_records, key=key))  # as written


class Broken(Sweep):
    """A sweep whose unlearning runs raise (what a bug or a config error found only at run time does)."""

    def train_point(self, split, seed, method, point, ctx):
        raise ValueError(f"{method} cannot run here")


def test_a_trial_that_raises_fails_the_sweep_at_once(backend, tmp_path):
    """A trial's own error stops the sweep with it (a ValueError naming the trial): no retry, no record."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    cfg = SweepConfig(**{**SMALL, "learning_rates": [1e-3]}, output_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "docs"))
    progress = Progress(enabled=False)
    with pytest.raises(ValueError, match=r"run forget10 seed0 (sgu|graddiff) lr0.001: (sgu|graddiff) cannot run here"):
        Broken(cfg, log=lambda m: None, backend=backend, progress=progress).run_grid()
    assert progress.counts["retried"] == 0 and progress.counts["failed"] == 1
    assert not list((tmp_path / "runs").rglob("lr*.json"))


def test_a_bad_method_field_fails_before_any_trial(tmp_path):
    """Every method's recipe is parsed by the driver first: a bad field fails in a second, not in a worker."""
    bad = {**SMALL, "methods": {"sgu": {"method": "sgu", "selective_function": "no_such_rule"}}}
    cfg = SweepConfig(**bad, output_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "docs"))
    with pytest.raises(ValueError, match="sweep method 'sgu'.*no_such_rule"):
        Sweep(cfg, log=lambda m: None).run_grid()
    assert not (tmp_path / "runs").exists()
