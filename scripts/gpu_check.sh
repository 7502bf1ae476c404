#!/usr/bin/env bash
# One-shot GPU check (a few minutes on one H100): both benchmarks on the GPU, then the distributed test.
#   bash scripts/gpu_check.sh 2>&1 | tee gpu_check.log
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no GPU'; print(torch.cuda.get_device_name())"
python scripts/bench_selection.py --device cuda --sizes 1e6 1e7 1e8
python scripts/bench_step.py --steps 8
python -m pytest -q tests/test_distributed.py
