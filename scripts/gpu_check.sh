#!/usr/bin/env bash
# One-shot GPU check (about 5 minutes on one H100/H200). Every stage runs under its own time limit,
# even if an earlier one failed; the script ends with a PASS/FAIL line per stage and its wall time.
#   bash scripts/gpu_check.sh 2>&1 | tee gpu_check.log
# Stages: environment; compiled kernel == readable rule on CUDA (fp32/bf16/fp16); both speed
# benchmarks on the GPU; the tiny models fine-tuned on the GPU; bf16 and fp16 (loss scaler) SGU runs
# through the Trainer; the memory-mode tests; peak memory of 3 SGU steps on a random model of Llama-3.2-1B's
# shape against scripts/memory_model.py (one GPU; FSDP2 and ZeRO-3 on 2 when 2 or more GPUs are lent). The
# 2-process tests are CPU (gloo) tests and are not rerun here.
set -uo pipefail
cd "$(dirname "$0")/.."
declare -a RESULTS=()
stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit} s)"
  local t0=$SECONDS
  if timeout "$limit" "$@"; then RESULTS+=("PASS $name ($((SECONDS - t0)) s)"); else RESULTS+=("FAIL $name ($((SECONDS - t0)) s, exit $?)"); fi
}
env_info() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || return 1
  python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
  python -c 'import transformers, accelerate, peft; print("transformers", transformers.__version__, "accelerate", accelerate.__version__, "peft", peft.__version__)'
}
unlearn_precision() {  # bf16 / fp16 SGU run of the tiny-llama recipe through the Trainer
  local precision=$1 out
  out=$(mktemp -d)
  sgu-llm unlearn --config recipes/tiny-llama/sgu.yaml --output_dir "$out/$precision" --$precision true || return 1
  python - "$out/$precision" <<'PY'
import json, sys
s = json.load(open(f"{sys.argv[1]}/unlearn_summary.json"))
print(sys.argv[1], "forget NLL", s["before"]["forget_nll"], "->", s["after"]["forget_nll"],
      "| retain NLL", s["before"]["retain_nll"], "->", s["after"]["retain_nll"],
      "| steps", s["global_steps"], "| overflow-skipped", s["selection_skipped_steps"])
assert s["after"]["forget_nll"] > s["before"]["forget_nll"], "forget NLL did not rise"
PY
}
export -f env_info unlearn_precision
stage environment 60 bash -c env_info
stage kernels 120 python scripts/check_kernels.py --device cuda
stage bench_selection 120 python scripts/bench_selection.py --device cuda --sizes 1e6 1e7 1e8 --model
stage bench_step 240 python scripts/bench_step.py --steps 8 --repeats 1 --variants graddiff sgu sgu_bf16_stash sgu_lean
stage finetune 120 sgu-llm finetune recipes/tiny-llama/sgu.yaml
stage unlearn_bf16 90 bash -c 'unlearn_precision bf16'
stage unlearn_fp16 90 bash -c 'unlearn_precision fp16'
stage memory_modes 180 python -m pytest -q -p no:cacheprovider tests/test_memory_modes.py
stage memory_1b 240 python scripts/gpu_memory_check.py --model llama-3.2-1b --steps 3
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
  stage memory_1b_fsdp2 240 accelerate launch --config_file recipes/accelerate/fsdp2.yaml --num_processes 2 \
    scripts/gpu_memory_check.py --model llama-3.2-1b --steps 3
  stage memory_1b_zero3 300 accelerate launch --config_file recipes/accelerate/deepspeed_zero3.yaml \
    --num_processes 2 scripts/gpu_memory_check.py --model llama-3.2-1b --steps 3
fi
printf '%s\n' "${RESULTS[@]}"
! printf '%s\n' "${RESULTS[@]}" | grep -q '^FAIL'
