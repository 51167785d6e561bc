#!/usr/bin/env bash
# One GPU session for the CUDA backend: build, GPU tests, compute-sanitizer, benchmark.
# On a machine with a 10-minute limit per command, start with bench/gpu_first_contact.sh
# (stages under one deadline, results written as each stage ends); this script is for
# the longer benchmark runs after it.
#
#   bash bench/gpu_session.sh [STAGE ...]     (from the repository root, on the GPU machine)
#
# Stages (default: build test sanitize bench; every run starts with `build`, incremental):
#   build       python setup.py build_ext --inplace for TORCH_CUDA_ARCH_LIST (default 9.0),
#               build_info(), ptxas resource report of the kernels (registers, spills)
#   test        pytest tests/test_cuda.py (slow tests included), JUnit XML
#   sanitize    compute-sanitizer --tool memcheck over a representative run (fails the
#               stage on any error); initcheck over the same run, kept as information
#   bench       bench-lowp bench-fp32 bench-tf32: python -m rnnkernels.bench --preset gpu
#               --device cuda (vs cuDNN in the same run) in bfloat16 and float16; in float32
#               with TF32 off in every library (NVIDIA_TF32_OVERRIDE=0); in float32 with TF32
#               on for both sides (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1; cuDNN's default)
#
# Results go to bench/results/<gpu-name>/ (logs, JUnit XML, JSON lines, CSV, summary.txt);
# when $OUT is set (the device tool), a tarball of that folder and summary.txt are copied
# there. The exit status is non-zero when any stage failed; later stages still run.
#
# Environment: PYTHON (default python3), MAX_JOBS (default: cores), TORCH_CUDA_ARCH_LIST
# (default 9.0), BENCH_PRESET (default gpu), BENCH_ARGS (extra arguments for the bench).
# Device time: build ~3-5 min on 16 cores, test ~2-4 min, sanitize ~3-6 min, bench ~10 min;
# split the stages over several calls when a call is limited to 10 minutes.

set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(build test sanitize bench)
EXPANDED=()
for stage in "${STAGES[@]}"; do
  case $stage in
    build|test|sanitize|bench-lowp|bench-fp32|bench-tf32) EXPANDED+=("$stage") ;;
    bench) EXPANDED+=(bench-lowp bench-fp32 bench-tf32) ;;
    *) echo "unknown stage '$stage' (build, test, sanitize, bench, bench-lowp, bench-fp32, bench-tf32)"
       exit 2 ;;
  esac
done
STAGES=("${EXPANDED[@]}")

GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -c 'A-Za-z0-9._\n-' '-' | sed 's/-*$//')
GPU_NAME=${GPU_NAME:-unknown-gpu}
RESULTS=$ROOT/bench/results/$GPU_NAME
mkdir -p "$RESULTS"
SUMMARY=$RESULTS/summary.txt
STATUS=0

note() { echo "$*" | tee -a "$SUMMARY"; }
stage_result() {  # name, exit code, seconds
  if [ "$2" -eq 0 ]; then note "stage $1: ok (${3}s)"; else note "stage $1: FAILED with $2 (${3}s)"; STATUS=1; fi
}

{
  echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) stages: ${STAGES[*]}"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
} >> "$SUMMARY"

environment() {
  {
    nvidia-smi 2>&1 | head -20
    nvcc --version 2>&1 | tail -2
    "$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "sm", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count,
          "memory GiB", round(p.total_memory / 2**30, 1))
EOF
  } > "$RESULTS/env.txt" 2>&1
}

build() {
  local t0=$SECONDS rc
  environment
  "$PY" setup.py build_ext --inplace > "$RESULTS/build.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    "$PY" -c "import rnnkernels, json; info = rnnkernels.build_info(); info.pop('parallel', None); print(json.dumps(info, indent=1))" \
      > "$RESULTS/build_info.json" 2>&1 || rc=$?
    "$PY" -c "import rnnkernels, sys; sys.exit(0 if rnnkernels.build_info()['cuda'] else 'no CUDA kernels in this build')" \
      >> "$RESULTS/build.log" 2>&1 || rc=$?
    # Registers, stack frames and spills of every kernel (sm_90).
    for f in csrc/cuda/kernels_*.cu; do
      nvcc -std=c++20 --expt-relaxed-constexpr -O3 -arch=sm_90 -Xptxas -v -Icsrc -Icsrc/include \
        -c "$f" -o /tmp/rk_ptxas.o 2>&1 | grep -E "Compiling entry|registers|spill" | sed "s|^|$(basename "$f"): |"
    done > "$RESULTS/ptxas.txt" 2>&1
    grep -q "bytes spill stores" "$RESULTS/ptxas.txt" && \
      note "ptxas: $(grep -c 'Used' "$RESULTS/ptxas.txt") kernels; spilling: $(grep -v ' 0 bytes spill stores' "$RESULTS/ptxas.txt" | grep -c 'spill stores')"
  else
    tail -30 "$RESULTS/build.log"
  fi
  stage_result build $rc $((SECONDS - t0))
  return $rc
}

run_tests() {
  local t0=$SECONDS rc
  "$PY" -m pytest -q -rs tests/test_cuda.py --junitxml="$RESULTS/test_cuda.xml" > "$RESULTS/test_cuda.log" 2>&1
  rc=$?
  tail -25 "$RESULTS/test_cuda.log"
  note "tests: $(tail -1 "$RESULTS/test_cuda.log")"
  stage_result test $rc $((SECONDS - t0))
}

# A representative run: every cell, two layers, both directions, the projection, dense
# and packed input, float32 and bfloat16, forward and backward.
sanitizer_script() {
  cat > "$1" <<'EOF'
import torch
from torch.nn.utils.rnn import pack_padded_sequence
import rnnkernels

assert rnnkernels.build_info()["cuda"], "this build has no CUDA kernels"
torch.manual_seed(0)
dev = "cuda"
lengths = torch.tensor([7, 3, 5, 1, 7])
cases = [("LSTM", dict(num_layers=2, bidirectional=True)),
         ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=5)),
         ("GRU", dict(num_layers=2, bidirectional=True)),
         ("RNN", dict(num_layers=2, bidirectional=True, nonlinearity="relu")),
         ("RNN", dict(nonlinearity="tanh", bias=False))]
for dtype in (torch.float32, torch.bfloat16):
    for cls, kwargs in cases:
        for packed in (False, True):
            model = getattr(rnnkernels, cls)(33, 17, **kwargs).to(dev, dtype)
            x = torch.randn(7, 5, 33, device=dev, dtype=dtype, requires_grad=True)
            inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
            out, state = model(inp)
            h_n = state[0] if isinstance(state, tuple) else state
            data = out.data if packed else out
            (data.float().square().sum() + h_n.float().sum()).backward()
    for cls in ("LSTMCell", "GRUCell", "RNNCell"):
        cell = getattr(rnnkernels, cls)(33, 17).to(dev, dtype)
        out = cell(torch.randn(5, 33, device=dev, dtype=dtype, requires_grad=True))
        out = out[0] if isinstance(out, tuple) else out
        out.float().sum().backward()
torch.cuda.synchronize()
print("sanitizer run: done")
EOF
}

sanitize() {
  local t0=$SECONDS rc=0 sanitizer script=/tmp/rk_sanitizer_run.py
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
  if [ -z "$sanitizer" ]; then
    note "sanitize: compute-sanitizer not found"
    stage_result sanitize 1 $((SECONDS - t0))
    return
  fi
  sanitizer_script "$script"
  "$sanitizer" --tool memcheck --error-exitcode 1 --print-limit 50 "$PY" "$script" \
    > "$RESULTS/memcheck.log" 2>&1
  rc=$?
  note "memcheck: $(grep -E 'ERROR SUMMARY|sanitizer run' "$RESULTS/memcheck.log" | tr '\n' ' ')"
  "$sanitizer" --tool initcheck --print-limit 50 "$PY" "$script" > "$RESULTS/initcheck.log" 2>&1
  note "initcheck (information only): $(grep -E 'ERROR SUMMARY' "$RESULTS/initcheck.log" | tr '\n' ' ')"
  stage_result sanitize $rc $((SECONDS - t0))
}

# One benchmark run: name, then extra environment assignments, then bench arguments.
bench_run() {
  local name=$1 preset=${BENCH_PRESET:-gpu} rc=0
  shift
  local envs=()
  while [ $# -gt 0 ] && [[ $1 == *=* ]]; do envs+=("$1"); shift; done
  # shellcheck disable=SC2086
  env "${envs[@]}" "$PY" -m rnnkernels.bench --preset "$preset" --device cuda "$@" \
    --out "$RESULTS/bench_${preset}_${name}.jsonl" --no-progress ${BENCH_ARGS:-} \
    > "$RESULTS/bench_${preset}_${name}.txt" 2>&1 || rc=$?
  echo "--- bench_${preset}_${name}"
  tail -40 "$RESULTS/bench_${preset}_${name}.txt"
  return $rc
}

bench() {  # which: lowp, fp32 (TF32 off everywhere) or tf32 (TF32 on for both sides)
  local t0=$SECONDS rc=0
  if ! "$PY" -c "import rnnkernels.bench" 2>/dev/null; then
    note "bench: rnnkernels.bench is not in this checkout (merge the bench work item first)"
    stage_result "bench-$1" 1 $((SECONDS - t0))
    return
  fi
  case $1 in
    lowp) bench_run lowp --dtype bfloat16 float16 || rc=$? ;;
    fp32) bench_run fp32_no_tf32 NVIDIA_TF32_OVERRIDE=0 --dtype float32 || rc=$? ;;
    tf32) bench_run fp32_tf32 TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 --dtype float32 || rc=$? ;;
  esac
  stage_result "bench-$1" $rc $((SECONDS - t0))
}



if build; then
  for stage in "${STAGES[@]}"; do
    case $stage in
      test) run_tests ;;
      sanitize) sanitize ;;
      bench-*) bench "${stage#bench-}" ;;
    esac
  done
else
  note "build failed: later stages skipped"
fi

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  tar -czf "$OUT/results-$GPU_NAME.tar.gz" -C "$ROOT/bench/results" "$GPU_NAME"
  cp "$SUMMARY" "$OUT/summary.txt"
fi
echo "=== summary ($SUMMARY)"
tail -15 "$SUMMARY"
exit $STATUS
