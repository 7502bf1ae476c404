"""Two CPU processes (gloo DDP, launched with torchrun) end with the same weights and metrics as one process
with the same global batch."""

import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "ddp_worker.py")


def launch(out, processes, per_device, method):
    # torchrun, not `accelerate launch --cpu`: accelerate's CPU launcher starts one process unless MPI is set up.
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_port",
        str(29500 + processes + (7 if method == "sgu" else 0)),
        WORKER,
        str(out),
        str(per_device),
        method,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out, weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sgu", "graddiff"])
def test_ddp_two_processes_match_one(tmp_path, method):
    one = launch(tmp_path / "one.pt", 1, 8, method)
    two = launch(tmp_path / "two.pt", 2, 4, method)
    diff = max((one["state"][k] - two["state"][k]).abs().max().item() for k in one["state"])
    assert diff <= 1e-5, diff
    # The runs did train (so equal weights are not trivially equal starting points).
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from sgu_llm.data.prompts import build_prompt
    from sgu_llm.data.synthetic import synthetic_tofu
    from sgu_llm.models import tiny_llama, train_tokenizer

    splits = synthetic_tofu(num_authors=20, qa_per_author=10, seed=0)
    tok = train_tokenizer([build_prompt(r["question"]) + r["answer"] for r in splits["full"]], vocab_size=400)
    start = tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0).state_dict()
    assert max((one["state"][k] - start[k]).abs().max().item() for k in start) > 1e-3
    # Metrics are reduced over processes: the logged losses and SGU fractions agree with one process.
    assert len(one["logs"]) == len(two["logs"]) == 3
    for a, b in zip(one["logs"], two["logs"]):
        for key in ("loss/forget", "loss/retain", "sgu/maintain_frac", "sgu/conflict_frac"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
