#!/usr/bin/env bash
# One-shot GPU check (about 5 minutes on one H100): both benchmarks on the GPU, bf16 and fp16 (loss
# scaler) SGU runs through Accelerate, then the distributed and memory-mode tests.
#   bash scripts/gpu_check.sh 2>&1 | tee gpu_check.log
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no GPU'; print(torch.cuda.get_device_name())"
python scripts/bench_selection.py --device cuda --sizes 1e6 1e7 1e8 --model
python scripts/bench_step.py --steps 8 --variants graddiff sgu sgu_bf16_stash sgu_lean
out=$(mktemp -d)
sgu-llm finetune recipes/tiny-llama/sgu.yaml
for precision in bf16 fp16; do
  sgu-llm unlearn --config recipes/tiny-llama/sgu.yaml --output_dir "$out/$precision" --$precision true
  python - "$out/$precision" <<'PY'
import json, sys
s = json.load(open(f"{sys.argv[1]}/unlearn_summary.json"))
print(sys.argv[1], "forget NLL", s["before"]["forget_nll"], "->", s["after"]["forget_nll"],
      "| steps", s["global_steps"], "| overflow-skipped", s["selection_skipped_steps"])
PY
done
python -m pytest -q tests/test_distributed.py tests/test_memory_modes.py
