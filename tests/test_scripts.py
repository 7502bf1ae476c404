"""The benchmark scripts run end to end on tiny sizes and end with their `ratio=` line."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(*args):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"ratio=(\d+\.\d+)", last)
    assert match, last
    return proc.stdout, float(match.group(1))


@pytest.mark.slow
def test_bench_selection_prints_its_ratio():
    out, ratio = run_script("bench_selection.py", "--sizes", "1e4", "1e5", "--repeats", "1")
    assert ratio > 0 and "n=1e+05" in out


@pytest.mark.slow
def test_bench_step_prints_time_and_memory():
    out, ratio = run_script(
        "bench_step.py",
        "--hidden",
        "32",
        "--layers",
        "1",
        "--steps",
        "3",
        "--repeats",
        "1",
        "--variants",
        "graddiff",
        "sgu",
    )
    assert ratio > 0
    assert out.count("extra_memory=") == 2  # sgu against graddiff, full and LoRA


@pytest.mark.slow
def test_threshold_accuracy_prints_rank_errors():
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "threshold_accuracy.py"),
            *("--hidden", "64", "--layers", "1", "--steps", "1", "--seeds", "2", "--max-exact", "1024"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert sum("rank error rms=" in line for line in lines) == 4
    assert 0 <= float(re.fullmatch(r"rank_error=(\d+\.\d+)", lines[-1]).group(1)) < 0.1


def test_check_kernels_compares_the_compiled_rule_with_the_readable_one():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "check_kernels.py"), "--device", "cpu", "--numel", "4099"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 6 and all(line.endswith(" ok") for line in lines)
