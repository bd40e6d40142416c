#!/usr/bin/env bash
# The synthetic multiphase comparison of benchmarks/RESULTS.md on one GPU: vanilla nnU-Net, early fusion + head,
# STD-Net and its three ablations, 100 synthetic cases of 32x48x48 with inter-phase misalignment (up to 3 mm / 3 deg),
# fold 0, schedule gpu2500 (50 epochs x 50 iterations) for every method, six trainings at once, then the benchmark.
# From the repository root on the GPU machine:
#   bash benchmarks/synthetic_comparison_gpu.sh WORKSPACE [COPY_TO] [EXTRA ARGUMENTS]
# EXTRA ARGUMENTS go to examples/synthetic_comparison.py (e.g. --controls --jobs 8 adds the prediction-pooling and all-SGD STD-Net controls;
# --methods nnUNetTrainer STDNetTrainer STDNetTrainer_predictionPool --jobs 3 trains only those; the diagnostics
# STDNetTrainer_shallowTemporal and STDNetTrainer_headLR1e4 are trained only when named there).
# The controls and diagnostics live in benchmarks/trainers/head_diagnostics.py, not in the package: this script adds
# that folder to nnUNet_extTrainer (the package's own trainer folder is added by the training code).
# More than one device call (each at most 10 min): run with COMPARISON_TIMEOUT=540 and the workspace under /tmp, then
# repeat the same command at once (the machine stays warm ~30 s): finished folds are skipped, interrupted ones resume
# from their last epoch (--c).
# COPY_TO (optional) receives comparison.tgz: the report, the logs and the results folders without checkpoints, every
# 30 s during the run and at the end (for a machine whose workspace is not kept; one file, because the device tool
# returns only a few files per call). Unpack with `tar xzf comparison.tgz`.
set -uo pipefail
work=${1:-runs/synthetic_gpu}
copy_to=${2:-}
shift $(( $# < 2 ? $# : 2 ))
export nnUNet_compile=${nnUNet_compile:-f}   # same eager set-up for every method (six compilations would cost minutes)
export nnUNet_extTrainer="${nnUNet_extTrainer:+$nnUNet_extTrainer:}$(pwd)/benchmarks/trainers"   # the head diagnostics
snapshot() {
  [ -n "$copy_to" ] || return 0
  mkdir -p "$copy_to"
  local parts=()
  for p in logs report nnUNet_results; do [ -e "$work/$p" ] && parts+=("$p"); done
  [ ${#parts[@]} -gt 0 ] || return 0
  tar czf "$copy_to/.comparison.tgz.part" -C "$work" --exclude='*.pth' --exclude='*.npz' --exclude='*.pkl' \
    "${parts[@]}" 2>/dev/null && mv "$copy_to/.comparison.tgz.part" "$copy_to/comparison.tgz" || true
}
if [ -n "$copy_to" ]; then (while sleep 30; do snapshot; done) & copier=$!; fi
# COMPARISON_TIMEOUT (seconds, 0 = none) stops the run, keeping what is finished (rerunning resumes it)
timeout "${COMPARISON_TIMEOUT:-0}" python3 examples/synthetic_comparison.py -o "$work" -device cuda --n-cases 100 \
  --folds 0 --schedule gpu2500 --jobs 6 "$@"
status=$?
[ -n "$copy_to" ] && kill "$copier" 2>/dev/null
snapshot
exit $status
