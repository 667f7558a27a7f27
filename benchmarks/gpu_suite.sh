#!/usr/bin/env bash
# One call validates a GPU machine in two phases that can also run alone (device time is short: 15 minutes a
# session, start-up included), so a failure in one phase can be fixed and that phase rerun at once:
#
#   --phase tests  (<= 3 min): install, versions, the GPU tests (pytest -m gpu), `nezha-kernels check`
#   --phase bench  (<= 4 min): first the cells that matter (bf16, D = 64 and 128, L = 512 .. 8192, fwd and
#                  fwd+bwd; triton / cuda / SDPA flash / reference), then the rest of the full grid
#                  (models, length mix, float32) as time allows
#   (no --phase)   both, tests first: <= 7 minutes
#
# Everything lands in $OUT, at most 8 files: log.txt (all output), status.txt (one line per step: exit code
# and seconds), results.csv, results.json and the plots (ops_<dtype>.png, models_<dtype>.png). Every step runs
# under `timeout`; the benchmark steps get explicit time budgets (cells not reached: "skipped: time budget").
#
#   OUT=/some/dir bash benchmarks/gpu_suite.sh [--phase tests|bench]   # on the GPU machine (no internet)
#   OUT=/tmp/suite bash benchmarks/gpu_suite.sh --dry-run              # on CPU: same steps and files, tiny
#                                                                      # grid, no install, tests collected only
set -uo pipefail

DRY_RUN=0
PHASE=all
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --phase) shift; PHASE=${1:-} ;;
    --phase=*) PHASE=${1#--phase=} ;;
    *) echo "usage: OUT=DIR $0 [--phase tests|bench] [--dry-run]" >&2; exit 2 ;;
  esac
  shift
done
case "$PHASE" in tests|bench|all) ;; *) echo "--phase must be tests or bench, got '$PHASE'" >&2; exit 2 ;; esac
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
TESTS_S=${SUITE_TESTS_S:-180}   # 3 minutes
BENCH_S=${SUITE_BENCH_S:-240}   # 4 minutes
# Appended to, so a rerun of one phase keeps the other's lines.
touch "$OUT/status.txt"

# step NAME LIMIT_S CMD...: run under timeout, record "NAME rc=N Ns" in status.txt.
step() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc
  [ "$limit" -lt 5 ] && limit=5
  echo "=== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" >> "$OUT/status.txt"
  echo "=== $name: rc=$rc in $((SECONDS - t0))s"
  return 0
}

install() {
  if [ "$DRY_RUN" = 1 ]; then
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    step install 20 "$PY" -c "import nezha_kernels; print('nezha_kernels', nezha_kernels.__version__, 'from', nezha_kernels.__file__)"
  else
    step install 60 "$PY" -m pip install -q --no-deps --no-build-isolation -e .
  fi
}

phase_tests() {
  local start=$SECONDS
  install
  step info 30 "$PY" -m nezha_kernels info
  command -v nvidia-smi >/dev/null && step nvidia-smi 15 nvidia-smi
  if [ "$DRY_RUN" = 1 ]; then
    step gpu-tests 120 bash -c '"$0" -m pytest -q --collect-only -m gpu tests; rc=$?; [ $rc = 5 ] && rc=0; exit $rc' "$PY"
    return
  fi
  # Correctness only: main Triton tiles, no autotuning (the bench autotunes). The CUDA extension builds first
  # (nezha-kernels build, cached) so the tests do not pay for it one by one.
  step build 60 "$PY" -m nezha_kernels build
  local left=$((TESTS_S - (SECONDS - start) - 35))
  NEZHA_KERNELS_TRITON_AUTOTUNE=0 step gpu-tests "$left" "$PY" -m pytest -q -rs -x -m gpu tests
  step check 30 "$PY" -m nezha_kernels check --device cuda
}

phase_bench() {
  local start=$SECONDS
  [ "$PHASE" = bench ] && install
  if [ "$DRY_RUN" = 1 ]; then
    step bench 90 "$PY" -m nezha_kernels.bench --dry-run --device cpu --fresh --out "$OUT" --time-budget 60
    return
  fi
  local providers="triton cuda sdpa reference"
  local core=(--only op --providers $providers --dtypes bfloat16 --lengths 512 1024 2048 4096 8192)
  # The cells that matter, D = 64 then 128, each with its own budget; results.csv/json append across steps.
  step bench-d64 85 "$PY" -m nezha_kernels.bench "${core[@]}" --head-dim 64 --fresh --out "$OUT" --time-budget 70
  step bench-d128 85 "$PY" -m nezha_kernels.bench "${core[@]}" --head-dim 128 --out "$OUT" --time-budget 70
  local left=$((BENCH_S - (SECONDS - start) - 15))
  if [ "$left" -ge 30 ]; then
    step bench-rest "$left" "$PY" -m nezha_kernels.bench --full --out "$OUT" --time-budget $((left - 15))
  else
    echo "bench-rest skipped: ${left}s left" | tee -a "$OUT/status.txt"
  fi
}

run() {
  local start=$SECONDS
  case "$PHASE" in
    tests) phase_tests ;;
    bench) phase_bench ;;
    all) phase_tests; phase_bench ;;
  esac
  echo "=== suite ($PHASE) done in $((SECONDS - start))s; files in $OUT:"
  ls -l "$OUT"
}

run 2>&1 | tee -a "$OUT/log.txt"
# The suite fails if any step failed (status.txt lines other than rc=0).
! grep -v "skipped" "$OUT/status.txt" | grep -qv " rc=0 "
