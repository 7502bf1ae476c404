"""The command line: end-to-end runs, help, and errors."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "recipes", "tiny-llama", "sgu.yaml")


def run_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "sgu_llm.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_import_is_lazy():
    code = "import sys, sgu_llm; from sgu_llm.selection import sgu_select; print('transformers' in sys.modules, 'sae_lens' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_help_lists_config_fields():
    out = run_cli("unlearn", "--config", TINY, "--help")
    assert out.returncode == 0
    for flag in ("--q_d", "--selective_function", "--threshold_population", "--use_peft", "--learning_rate"):
        assert flag in out.stdout


def test_methods_command():
    out = run_cli("methods")
    assert "sgu" in out.stdout and "graddiff" in out.stdout and "pcgrad" in out.stdout


def test_bad_recipe_key_exits_with_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: sgu\nqd: 0.5\n")
    out = run_cli("unlearn", "--config", str(bad), "--output_dir", str(tmp_path / "o"))
    assert out.returncode == 2
    assert "unknown keys: qd (did you mean 'q_d'?)" in out.stderr
    assert not (tmp_path / "o").exists()


def test_refuses_previous_run(tmp_path):
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    (out_dir / "trainer_state.json").write_text("{}")
    out = run_cli("unlearn", "--config", TINY, "--output_dir", str(out_dir))
    assert out.returncode == 2 and "already holds a previous run" in out.stderr


@pytest.mark.slow
def test_unlearn_end_to_end(tmp_path):
    out_dir = tmp_path / "run"
    out = run_cli("unlearn", "--config", TINY, "--output_dir", str(out_dir), "--disable_tqdm", "true")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((out_dir / "unlearn_summary.json").read_text())
    assert summary["after"]["forget_nll"] > summary["before"]["forget_nll"] + 0.5
    assert summary["after"]["retain_nll"] < summary["before"]["retain_nll"] + 0.1
    assert (out_dir / "model.safetensors").exists() and (out_dir / "tokenizer.json").exists()
    assert "[sgu] forget NLL" in out.stdout


@pytest.mark.slow
def test_accelerate_launch_module_with_lora(tmp_path):
    out_dir = tmp_path / "lora"
    recipe = os.path.join(ROOT, "recipes", "tiny-llama", "sgu_lora.yaml")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--cpu",
        "-m",
        "sgu_llm.unlearn",
        "--config",
        recipe,
        "--output_dir",
        str(out_dir),
        "--num_train_epochs",
        "2",
        "--disable_tqdm",
        "true",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (out_dir / "adapter_config.json").exists()
    summary = json.loads((out_dir / "unlearn_summary.json").read_text())
    assert summary["lora"] is True and summary["after"]["forget_nll"] > summary["before"]["forget_nll"]
