#!/usr/bin/env bash
# Every GPU figure of benchmarks/RESULTS.md for STD-Net vs nnU-Net's PlainConvUNet, in one call, baseline measured in
# the same run of each lever. From the repository root on the GPU machine:
#   bash benchmarks/stdnet_gpu_suite.sh stdnet_gpu.jsonl
# Each line of the output is one JSON record of benchmarks/stdnet_gpu.py, labelled with "tag" (the lever measured).
# Runs are ordered by priority and each is capped (SUITE_TIMEOUT seconds), so a slow lever cannot starve the others.
set -uo pipefail
out=${1:-stdnet_gpu.jsonl}
cap=${SUITE_TIMEOUT:-150}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
run() {
  local tag=$1; shift
  echo "=== $tag: $*" >&2
  timeout "$cap" python3 benchmarks/stdnet_gpu.py --out "$out" --tag "$tag" "$@" > /dev/null || echo "=== $tag failed (exit $?)" >&2
}
run default                                          # the set-up: fp16 autocast, SGD, torch.compile, 224^3 fwd
run eager --no-compile --skip-volume                 # what torch.compile buys
run bf16 --bf16 --skip-volume                        # lever: bf16 autocast (no GradScaler)
run channels_last --channels-last --skip-volume      # lever: channels_last_3d
run cuda_graphs --cuda-graphs --skip-volume          # lever: CUDA graphs (reduce-overhead)
run sdpa_math --sdpa-backend math --networks stdnet --skip-volume   # lever: fused attention vs the math path
