#!/usr/bin/env bash
# One call validates a GPU machine: install, versions, GPU tests, numeric check, full benchmark.
# Everything lands in $OUT, at most 8 files: log.txt (all output), status.txt (one line per step:
# exit code and seconds), results.csv, results.json and the plots (ops_<dtype>.png, models_<dtype>.png).
# Finishes within 9 minutes: every step runs under `timeout`, and the benchmark gets what is left as
# its own time budget (cells it cannot reach are marked "skipped: time budget", results still written).
#
#   OUT=/some/dir bash benchmarks/gpu_suite.sh             # on the GPU machine (no internet needed)
#   OUT=/tmp/suite bash benchmarks/gpu_suite.sh --dry-run  # on CPU: same steps and files, tiny grid,
#                                                          # no install, GPU tests only collected
set -uo pipefail

DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: OUT=DIR $0 [--dry-run]" >&2; exit 2 ;;
esac
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
TOTAL_S=${SUITE_TOTAL_S:-540}   # 9 minutes
START=$SECONDS
: > "$OUT/status.txt"

# step NAME LIMIT_S CMD...: run under timeout, record "NAME rc=N Ns" in status.txt.
step() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc
  echo "=== $name (limit ${limit}s, elapsed $((SECONDS - START))s): $*"
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" >> "$OUT/status.txt"
  echo "=== $name: rc=$rc in $((SECONDS - t0))s"
  return 0
}

run_all() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "dry run: not installing; importing the checkout through PYTHONPATH"
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    step install 10 "$PY" -c "import nezha_kernels; print('nezha_kernels', nezha_kernels.__version__, 'from', nezha_kernels.__file__)"
  else
    step install 150 "$PY" -m pip install --no-deps --no-build-isolation -e .
  fi
  step info 60 "$PY" -m nezha_kernels info
  command -v nvidia-smi >/dev/null && step nvidia-smi 20 nvidia-smi
  if [ "$DRY_RUN" = 1 ]; then
    # collect only (exit code 5, "no test selected", is fine: no test may be marked gpu yet)
    step gpu-tests 120 bash -c '"$0" -m pytest -q --collect-only -m gpu tests; rc=$?; [ $rc = 5 ] && rc=0; exit $rc' "$PY"
  else
    # GPU tests are those marked `gpu`; if none are marked, the whole suite (GPU tests skip without CUDA).
    local t0=$SECONDS
    echo "=== gpu-tests (limit 210s): pytest -m gpu"
    # Correctness only: main Triton tiles, no autotuning (a third of the JIT compiles); the bench autotunes.
    NEZHA_KERNELS_TRITON_AUTOTUNE=0 timeout --kill-after=10 210 "$PY" -m pytest -q -rs -m gpu tests
    local rc=$?
    if [ "$rc" = 5 ]; then
      echo "no test is marked gpu: running the whole suite"
      timeout --kill-after=10 $((210 - (SECONDS - t0))) "$PY" -m pytest -q -rs -x tests
      rc=$?
    fi
    echo "gpu-tests rc=$rc $((SECONDS - t0))s" >> "$OUT/status.txt"
    echo "=== gpu-tests: rc=$rc in $((SECONDS - t0))s"
    step check 60 "$PY" -m nezha_kernels check
  fi
  local left=$((TOTAL_S - (SECONDS - START) - 15))
  [ "$left" -lt 30 ] && left=30
  if [ "$DRY_RUN" = 1 ]; then
    step bench "$left" "$PY" -m nezha_kernels.bench --dry-run --device cpu --fresh --out "$OUT" \
      --time-budget $((left > 40 ? left - 20 : 20))
  else
    local budget=$((left - 40)); [ "$budget" -lt 20 ] && budget=20
    step bench "$left" "$PY" -m nezha_kernels.bench --full --fresh --out "$OUT" --time-budget "$budget"
  fi
  echo "=== suite done in $((SECONDS - START))s; files in $OUT:"
  ls -l "$OUT"
}

run_all 2>&1 | tee "$OUT/log.txt"
# The suite fails if any step failed (status.txt lines other than rc=0).
! grep -qv " rc=0 " "$OUT/status.txt"
