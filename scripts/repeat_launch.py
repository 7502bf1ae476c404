"""Launch a 2-process CPU training N times and count the launches that lose a rank.

    python scripts/repeat_launch.py --times 20

Each launch is `accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml tests/ddp_worker.py ...`
(one SGU optimizer step on a tiny Llama, DDP over gloo, the trainer's own teardown). A rank that dies at
exit (e.g. SIGABRT, "terminate called without an active exception") shows as a non-zero exit status or
that message in stderr. Prints one line per launch and a summary.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--times", type=int, default=20)
    ap.add_argument("--method", default="sgu")
    a = ap.parse_args()
    env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.times):
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
            cmd += [os.path.join(ROOT, "recipes", "accelerate", "cpu_2proc.yaml"), "--main_process_port"]
            cmd += [str(29800 + i), os.path.join(ROOT, "tests", "ddp_worker.py")]
            cmd += [os.path.join(tmp, f"{i}.pt"), "4", a.method, "1"]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
            aborted = "terminate called" in proc.stderr or proc.returncode != 0
            failed += aborted
            print(f"launch {i + 1}: exit {proc.returncode}, {time.perf_counter() - start:.0f} s"
                  + (" LOST A RANK" if aborted else ""), flush=True)
    print(f"{failed} of {a.times} launches lost a rank")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
