"""The command line: end-to-end runs, help, and errors."""

import json
import os
import subprocess
import sys

import pytest

from sgu_llm import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "recipes", "tiny-llama", "sgu.yaml")


def in_process(capsys, *args):
    """`sgu-llm ARGS` in this process: (exit code, stdout, stderr). For commands that train nothing a subprocess
    adds only an interpreter start."""
    try:
        code = cli.main(list(args))
    except SystemExit as exit_:  # argparse's --help
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_import_is_lazy():
    code = "import sys, sgu_llm; from sgu_llm.selection import sgu_select; print('transformers' in sys.modules, 'sae_lens' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_help_lists_config_fields(capsys):
    code, out, _ = in_process(capsys, "unlearn", "--config", TINY, "--help")
    assert code == 0
    for flag in ("--q_d", "--selective_function", "--threshold_population", "--use_peft", "--learning_rate"):
        assert flag in out


def test_methods_command(capsys):
    code, out, _ = in_process(capsys, "methods")
    assert code == 0 and "sgu" in out and "graddiff" in out and "pcgrad" in out


def test_bad_recipe_key_exits_with_message(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: sgu\nqd: 0.5\n")
    code, _, err = in_process(capsys, "unlearn", "--config", str(bad), "--output_dir", str(tmp_path / "o"))
    assert code == 2
    assert "unknown keys: qd (did you mean 'q_d'?)" in err
    assert not (tmp_path / "o").exists()


def test_refuses_previous_run(tmp_path, capsys):
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    (out_dir / "trainer_state.json").write_text("{}")
    code, _, err = in_process(capsys, "unlearn", "--config", TINY, "--output_dir", str(out_dir))
    assert code == 2 and "already holds a previous run" in err


@pytest.mark.slow
def test_unlearn_end_to_end(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, stdout, err = in_process(capsys, "unlearn", "--config", TINY, "--output_dir", str(out_dir), "--disable_tqdm", "true")
    assert code == 0, err[-3000:]
    summary = json.loads((out_dir / "unlearn_summary.json").read_text())
    assert summary["after"]["forget_nll"] > summary["before"]["forget_nll"] + 0.5
    assert summary["after"]["retain_nll"] < summary["before"]["retain_nll"] + 0.1
    assert (out_dir / "model.safetensors").exists() and (out_dir / "tokenizer.json").exists()
    assert "[sgu] forget NLL" in stdout


@pytest.mark.slow
def test_two_process_lora_unlearn_finishes_saves_once_and_matches_one_process(tmp_path, capsys, monkeypatch):
    """`accelerate launch -m sgu_llm.unlearn` with 2 CPU processes (DDP, gloo) of the LoRA recipe against one
    process at the same global batch (10, which divides the 20 forget rows): it finishes, closes its process
    group, writes one adapter, and its forget and retain NLL are the one-process run's as far as SGU promises
    across process counts (tests/test_distributed.py)."""
    env = {**os.environ, "SGU_LLM_CACHE": str(tmp_path / "cache"), "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    recipe = os.path.join(ROOT, "recipes", "tiny-llama", "sgu_lora.yaml")
    # sgu_reverse: the recipe's prune-only rule moves the forget NLL of this tiny model by less than 0.01.
    common = ["--config", recipe, "--disable_tqdm", "true", "--num_train_epochs", "3", "--selective_function",
              "sgu_reverse"]
    one, two = tmp_path / "one", tmp_path / "two"
    monkeypatch.setenv("SGU_LLM_CACHE", env["SGU_LLM_CACHE"])
    code, _, err = in_process(capsys, "unlearn", *common, "--output_dir", str(one), "--per_device_train_batch_size", "10")
    assert code == 0, err[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              os.path.join(ROOT, "recipes", "accelerate", "cpu_2proc.yaml"), "--main_process_port", "29741"]
    proc = subprocess.run(
        [*launch, "-m", "sgu_llm.unlearn", *common, "--output_dir", str(two), "--per_device_train_batch_size", "5"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr
    names = [p.name for p in two.iterdir()]
    assert names.count("adapter_config.json") == 1 and not [n for n in names if n.startswith(".tmp-")]
    s1, s2 = (json.loads((d / "unlearn_summary.json").read_text()) for d in (one, two))
    assert s1["lora"] is s2["lora"] is True
    assert s1["global_steps"] == s2["global_steps"] == 6
    assert s2["after"]["forget_nll"] > 5 * s2["before"]["forget_nll"]  # it did unlearn
    for key in ("forget_nll", "retain_nll"):
        assert s2["after"][key] == pytest.approx(s1["after"][key], rel=1e-2), key
