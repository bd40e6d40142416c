#!/usr/bin/env bash
# Every GPU figure of benchmarks/RESULTS.md for STD-Net vs nnU-Net's PlainConvUNet, in one call, baseline measured in
# the same run of each lever. From the repository root on the GPU machine:
#   bash benchmarks/stdnet_gpu_suite.sh stdnet_gpu.jsonl [TAG ...]
# Each line of the output is one JSON record of benchmarks/stdnet_gpu.py, labelled with "tag" (the lever measured).
# With TAGs only those runs are made (e.g. `... gpu.jsonl default hybrid_optimizer`).
# Runs are ordered by priority and each is capped (SUITE_TIMEOUT seconds), so a slow lever cannot starve the others.
set -uo pipefail
out=${1:-stdnet_gpu.jsonl}
shift $(( $# < 1 ? $# : 1 ))
only=" $* "
cap=${SUITE_TIMEOUT:-150}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
run() {
  local tag=$1; shift
  [ "$only" = "  " ] || [[ "$only" == *" $tag "* ]] || return 0
  echo "=== $tag: $*" >&2
  timeout "$cap" python3 benchmarks/stdnet_gpu.py --out "$out" --tag "$tag" "$@" > /dev/null || echo "=== $tag failed (exit $?)" >&2
}
run default                                          # the set-up: fp16 autocast, SGD, torch.compile, 224^3 fwd
run eager --no-compile --skip-volume                 # what torch.compile buys
run bf16 --bf16 --skip-volume                        # lever: bf16 autocast (no GradScaler)
run channels_last --channels-last --skip-volume      # lever: channels_last_3d
run cuda_graphs --cuda-graphs --skip-volume          # lever: CUDA graphs (reduce-overhead)
run sdpa_math --sdpa-backend math --networks stdnet --skip-volume   # lever: fused attention vs the math path
run hybrid_optimizer --optimizer hybrid --skip-volume               # the trainers' optimizer (AdamW for STD-Net's extras)
run hybrid_fused --optimizer hybrid --fused-sgd --skip-volume       # the trainers' optimizer on its fused path (their CUDA default)
run fused_sgd --fused-sgd --skip-volume                             # lever: fused SGD kernel
run cuda_graphs_fused_sgd --cuda-graphs --fused-sgd --skip-volume   # the two best levers together
run cuda_graphs_fused_sgd_bf16 --cuda-graphs --fused-sgd --bf16 --skip-volume
run cuda_graphs_hybrid_fused --cuda-graphs --optimizer hybrid --fused-sgd --skip-volume
