#!/usr/bin/env bash
# One call validates a GPU machine in two phases that can also run alone (device time is short: 15 minutes a
# session, start-up included), so a failure in one phase can be fixed and that phase rerun at once:
#
#   --phase tests  (<= 3 min): install, versions; correctness first: the Triton and CUDA parity tests against the
#                  float64 formula (tests/test_triton_gpu.py, test_cuda_gpu.py, test_cuda_varlen_gpu.py, the GPU
#                  cases of test_determinism.py) in parallel groups while the CUDA extension builds; then the other
#                  GPU tests as time allows; `nezha-kernels check`.
#   --phase bench  (<= 4 min): the op cells the goals name, bf16, non-causal, L = 1024, 4096, 8192, 512 (in that
#                  order), fwd and fwd+bwd, providers SDPA flash / triton / triton plain twin / cuda, D = 64 then
#                  D = 128 (each its own step and budget); then the models and the length mix as time allows;
#                  last, the ratio table (ours vs SDPA flash, ours vs the twin) from results.json.
#   (no --phase)   both, tests first: <= 7 minutes
#
# A backend whose parity tests failed in the tests phase (status.txt: "parity-<backend>... rc=1") is not timed:
# its rows read "skipped: its parity tests failed". Every op provider must also pass the bench's own float64 check
# at the benchmarked dtype and head dim before it is timed (nezha_kernels/bench/parity.py).
#
# Everything lands in $OUT, at most 8 files: log.txt (all output), status.txt (one line per step: exit code and
# seconds), results.csv, results.json, ops_bfloat16.png (D = 64) and the models' plots. Every step runs under
# `timeout`; the benchmark steps get explicit time budgets (cells not reached: "skipped: time budget").
# The static profile (`nezha-kernels compile-check --profile`) is a CPU job and is not run here.
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
cd "$REPO" || exit 2
TESTS_S=${SUITE_TESTS_S:-180}   # 3 minutes
BENCH_S=${SUITE_BENCH_S:-240}   # 4 minutes
# A dry run collects the tests on a CPU that may be busy: its limits only guard against a hang.
[ "$DRY_RUN" = 1 ] && TESTS_S=${SUITE_TESTS_S:-600}
# Scratch for the parallel groups' own logs (copied into log.txt in order); never under $OUT (8 files at most).
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
# Appended to, so a rerun of one phase keeps the other's lines.
touch "$OUT/status.txt"

# step NAME LIMIT_S CMD...: run under timeout, record "NAME rc=N Ns" in status.txt.
step() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc
  [ "$limit" -lt 5 ] && limit=5
  # A dry run's limits only guard against a hang: on a CPU busy with parallel test workers, importing torch alone
  # once took over 20 s (the install step's limit).
  [ "$DRY_RUN" = 1 ] && [ "$limit" -lt 120 ] && limit=120
  echo "=== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" >> "$OUT/status.txt"
  echo "=== $name: rc=$rc in $((SECONDS - t0))s"
  return 0
}

# bg_step NAME LIMIT_S CMD...: step in the background, its output in $SCRATCH/NAME.log until show_bg prints it.
bg_step() {
  local name=$1
  step "$@" > "$SCRATCH/$name.log" 2>&1 &
}
show_bg() {
  local name
  for name in "$@"; do
    [ -f "$SCRATCH/$name.log" ] && cat "$SCRATCH/$name.log"
  done
}

install() {
  if [ "$DRY_RUN" = 1 ]; then
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    step install 20 "$PY" -c "import nezha_kernels; print('nezha_kernels', nezha_kernels.__version__, 'from', nezha_kernels.__file__)"
  else
    step install 60 "$PY" -m pip install -q --no-deps --no-build-isolation -e .
  fi
}

# pytest ARGS...: the GPU tests (collected only in a dry run: no GPU there). -rfE: failures listed at the end.
pytest_gpu() {
  if [ "$DRY_RUN" = 1 ]; then
    "$PY" -m pytest -q --collect-only -p no:cacheprovider -m gpu "$@"
    local rc=$?
    [ $rc = 5 ] && rc=0  # "no tests collected" is no failure when a -k filter empties a file
    return $rc
  fi
  NEZHA_KERNELS_TRITON_AUTOTUNE=0 "$PY" -m pytest -q -rfE -p no:cacheprovider --maxfail=5 -m gpu "$@"
}
export -f pytest_gpu
export DRY_RUN PY

phase_tests() {
  local start=$SECONDS left
  install
  step info 30 "$PY" -m nezha_kernels info
  command -v nvidia-smi >/dev/null && step nvidia-smi 15 nvidia-smi
  # The CUDA extension builds (cached for every later process) while the Triton parity groups run: three
  # pytest processes, so Triton's compiles use several of the machine's cores. Main tiles, no autotuning.
  # Time left after this block: ~35 s for the CUDA groups, ~15 s for the other tests, 30 s for `check`.
  left=$((TESTS_S - (SECONDS - start) - 80))
  [ "$left" -gt 90 ] && left=90
  if [ "$DRY_RUN" = 1 ]; then
    bg_step build 60 "$PY" -c "import nezha_kernels.backends.cuda_backend"
  else
    bg_step build "$((left + 10))" "$PY" -m nezha_kernels build
  fi
  # bf16 (the benchmark's dtype) in its own group; the file's dtype ids are dtype0..2 (fp16, bf16, fp32).
  bg_step parity-triton-bf16 "$left" bash -c 'pytest_gpu tests/test_triton_gpu.py -k "dtype1 or bfloat16"'
  bg_step parity-triton-other "$left" bash -c 'pytest_gpu tests/test_triton_gpu.py -k "not (dtype1 or bfloat16)"'
  bg_step parity-triton-determinism "$left" bash -c 'pytest_gpu tests/test_determinism.py -k triton'
  wait
  show_bg parity-triton-bf16 parity-triton-other parity-triton-determinism build
  left=$((TESTS_S - (SECONDS - start) - 45))
  [ "$left" -gt 60 ] && left=60
  bg_step parity-cuda "$left" bash -c 'pytest_gpu tests/test_cuda_gpu.py tests/test_cuda_varlen_gpu.py'
  bg_step parity-cuda-determinism "$left" bash -c 'pytest_gpu tests/test_determinism.py -k cuda'
  wait
  show_bg parity-cuda parity-cuda-determinism
  # The other GPU tests (ops, models, AMP, compile, bad input, padding-free): what time is left.
  left=$((TESTS_S - (SECONDS - start) - 35))
  if [ "$left" -ge 15 ]; then
    step gpu-tests-rest "$left" bash -c 'pytest_gpu tests --ignore=tests/test_triton_gpu.py \
      --ignore=tests/test_cuda_gpu.py --ignore=tests/test_cuda_varlen_gpu.py --ignore=tests/test_determinism.py'
  else
    echo "gpu-tests-rest skipped: ${left}s left" | tee -a "$OUT/status.txt"
  fi
  if [ "$DRY_RUN" = 1 ]; then
    echo "check skipped: dry run (no GPU)" | tee -a "$OUT/status.txt"
  else
    step check 30 "$PY" -m nezha_kernels check --device cuda
  fi
}

# The op providers whose parity tests failed (rc=1: a test failed; a timeout is no verdict) in the newest run of
# each parity step (status.txt is appended to across reruns).
failed_parity() {
  awk '/^parity-/ { rc[$1] = $2 } END {
    for (name in rc) if (rc[name] == "rc=1") { if (name ~ /^parity-triton/) t = 1; else if (name ~ /^parity-cuda/) c = 1 }
    if (t) printf " triton twin"; if (c) printf " cuda" }' "$OUT/status.txt"
}

phase_bench() {
  local start=$SECONDS left failed d
  [ "$PHASE" = bench ] && install
  failed=$(failed_parity)
  [ -n "$failed" ] && echo "parity failed in the tests phase for:$failed (their rows are marked, not timed)"
  # Budget 65 s per head dim, the step's limit 30 s more: a cell started before the deadline (a compile) may
  # overrun it, and a step killed by its limit writes no results.
  local mode_args=(--device cuda --lengths 1024 4096 8192 512 --time-budget 65)
  local step_s=95 rest_args=(--time-budget) providers=(sdpa triton twin cuda) dtype=bfloat16
  local rest_only=(model length-mix)
  if [ "$DRY_RUN" = 1 ]; then
    # CPU: the same steps on a tiny grid; no time budgets (a busy CPU must not turn cells into skips), the
    # steps' timeouts stay as the safety net. reference/torch stand in for the GPU-only providers.
    mode_args=(--device cpu --dry-run --lengths 32)
    step_s=150
    rest_args=(--dry-run)
    providers+=(torch)
    dtype=float32
    rest_only=(model)  # the length mix's dry run is tests/test_bench.py's own (it costs minutes on a busy CPU)
  fi
  # The cells that matter: D = 64, then 128, each its own step; results.csv/json append across steps.
  for d in 64 128; do
    local fresh=() plots=(--no-plots)
    [ "$d" = 64 ] && fresh=(--fresh) && plots=()
    NEZHA_KERNELS_TRITON_AUTOTUNE=0 step "bench-d$d" "$step_s" "$PY" -m nezha_kernels.bench --only op \
      --providers "${providers[@]}" --dtypes "$dtype" \
      --head-dim "$d" --modes fwd fwd+bwd "${mode_args[@]}" ${failed:+--failed-parity $failed} \
      "${fresh[@]}" "${plots[@]}" --out "$OUT"
  done
  left=$((BENCH_S - (SECONDS - start) - 20))
  [ "$DRY_RUN" = 1 ] && left=200
  if [ "$left" -ge 30 ]; then
    [ "$DRY_RUN" = 1 ] || rest_args+=("$((left - 15))")
    NEZHA_KERNELS_TRITON_AUTOTUNE=0 step bench-models "$left" "$PY" -m nezha_kernels.bench --only "${rest_only[@]}" \
      "${mode_args[@]:0:2}" "${rest_args[@]}" --out "$OUT"
  else
    echo "bench-models skipped: ${left}s left" | tee -a "$OUT/status.txt"
  fi
  step ratios 20 "$PY" -m nezha_kernels.bench.ratios "$OUT/results.json"
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
  echo "=== status.txt:"
  cat "$OUT/status.txt"
}

run 2>&1 | tee -a "$OUT/log.txt"
# The suite fails if any step failed (status.txt lines other than rc=0).
! grep -v "skipped" "$OUT/status.txt" | grep -qv " rc=0 "
