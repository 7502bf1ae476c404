"""The benchmark scripts run end to end on tiny sizes and end with their `ratio=` line."""

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import runpy
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(name, *args):
    """Run `python scripts/NAME ARGS` in this process (its output, after asserting it exited 0): a subprocess
    would add only an interpreter start; the scripts that need fresh processes start their own."""
    argv = sys.argv
    sys.argv = [os.path.join(ROOT, "scripts", name), *args]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    finally:
        sys.argv = argv
    assert code == 0, out.getvalue()[-3000:]
    return out.getvalue()


def run_script(*args):
    """`script`, ending with its `ratio=` line: (output, ratio)."""
    out = script(*args)
    last = out.strip().splitlines()[-1]
    match = re.fullmatch(r"ratio=(\d+\.\d+)", last)
    assert match, last
    return out, float(match.group(1))


@pytest.mark.slow
def test_bench_selection_prints_its_ratio():
    out, ratio = run_script("bench_selection.py", "--sizes", "1e4", "1e5", "--repeats", "1")
    assert ratio > 0 and "n=1e+05" in out


@pytest.mark.slow
def test_bench_step_prints_time_and_memory():
    """The script (full parameters, one fresh process per variant) and its LoRA worker, in this process: the
    worker is what each fresh process runs, `--modes lora` only passes it a LoRA config."""
    out, ratio = run_script(
        "bench_step.py",
        *("--hidden", "32", "--layers", "1", "--steps", "3", "--repeats", "1", "--modes", "full"),
        *("--variants", "graddiff", "sgu"),
    )
    assert ratio > 0
    assert out.count("extra_memory=") == 1  # sgu against graddiff
    spec = importlib.util.spec_from_file_location("bench_step", os.path.join(ROOT, "scripts", "bench_step.py"))
    bench_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_step)
    args = argparse.Namespace(variant="sgu", lora=True, hidden=32, layers=1, steps=3, batch=8, bf16=False)
    lora = bench_step.worker(args)
    assert lora["step_ms"] > 0 and 0 < lora["trainable_m"] < lora["params_m"]  # only the adapters train


@pytest.mark.slow
def test_threshold_accuracy_prints_rank_errors():
    out = script(
        "threshold_accuracy.py", *("--hidden", "64", "--layers", "1", "--steps", "1", "--seeds", "2", "--max-exact", "1024")
    )
    lines = out.strip().splitlines()
    assert sum("rank error rms=" in line for line in lines) == 4
    assert 0 <= float(re.fullmatch(r"rank_error=(\d+\.\d+)", lines[-1]).group(1)) < 0.1


def test_check_kernels_compares_the_compiled_rule_with_the_readable_one():
    lines = script("check_kernels.py", "--device", "cpu", "--numel", "4099").strip().splitlines()
    assert lines[0].startswith("torch ") and "CPU capability" in lines[0]
    checks = [line for line in lines if " used (" in line]
    assert len(checks) == 7 and all(line.endswith(" ok") for line in checks)  # 3 dtypes x 2 rules, the rows
    assert all(" compiled: " in line for line in checks)


def test_compare_margins_lists_each_check_under_each_kernel_set(tmp_path):
    def write(name, forced, value):
        rec = {"test": "tests/t.py::test_a", "name": "forget NLL rise", "value": value, "bound": 0.2, "op": ">",
               "capability": "AVX2", "forced": forced}
        (tmp_path / name).write_text(json.dumps(rec) + "\n")

    write("a.jsonl", None, 0.6)
    write("b.jsonl", "default", 0.29)
    out = script("compare_margins.py", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"))
    assert "| AVX2 | default |" in out
    assert "| test_a | forget NLL rise | > 0.2 | 0.6 | 0.29 | 0.31 | 1.45 (tight) |" in out  # room under 1.5 is marked
    write("b.jsonl", "default", 0.1)  # fails its bound under the second set: the script fails
    with pytest.raises(AssertionError):
        script("compare_margins.py", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"))
