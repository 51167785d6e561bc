#!/usr/bin/env bash
# First contact with a GPU: stages under one deadline, each with a time cap of its own,
# each writing its log and results to $OUT as it finishes, so a run cut short still
# reports what it reached.
#
#   OUT=/some/dir bash bench/gpu_first_contact.sh       (from the repository root)
#
# Stages, in order (cap in seconds; the deadline, DEADLINE_S, default 480, wins):
#   env       GPU, driver, torch, CUDA, cuDNN, gcc, nvcc                           (30)
#   build     setup.py build_ext --inplace for sm_90 only, MAX_JOBS=16             (240)
#   smoke     bench/gpu_checks.py smoke: every cell, dense and packed, fp32/bf16/fp16/fp64
#             against float64 and cuDNN                                            (90)
#   steps     bench/gpu_checks.py steps: us per step ours vs cuDNN, host issue time and
#             kernels per step                                                     (120)
#   tests     tests/test_cuda.py without the slow tests, stop at the first failure (120)
#   memcheck  compute-sanitizer memcheck over a short representative run           (90)
# On a machine without a GPU (CI), or with FIRST_CONTACT_DEVICE=cpu, build, tests and
# memcheck are skipped with the reason and smoke and steps run on the CPU (tiny shapes),
# so the script cannot rot unnoticed (tests/test_gpu_first_contact.py).
#
# $OUT receives at most 8 files (the device tool's limit): summary.txt, env.txt,
# build.log, smoke.jsonl, steps.jsonl, tests.log, memcheck.log and results.tar.gz of them
# all. Without $OUT they go to bench/results/<gpu-name>/first-contact-<time>/.
# The exit status is 1 when a stage failed; later stages still run.

set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
DEADLINE=$((SECONDS + ${DEADLINE_S:-480}))

HAS_GPU=0
if [ "${FIRST_CONTACT_DEVICE:-}" != cpu ] && command -v nvidia-smi > /dev/null 2>&1 &&
   nvidia-smi -L > /dev/null 2>&1; then
  HAS_GPU=1
fi
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -c 'A-Za-z0-9._\n-' '-' | sed 's/-*$//')
GPU_NAME=${GPU_NAME:-no-gpu}
OUT=${OUT:-$ROOT/bench/results/$GPU_NAME/first-contact-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
STATUS=0

note() { echo "$*" | tee -a "$SUMMARY"; }

# stage NAME CAP_S COMMAND: runs the bash command line COMMAND (the functions below are
# exported to it) under min(CAP_S, time left).
stage() {
  local name=$1 cap=$2 command=$3 left=$((DEADLINE - SECONDS)) t0=$SECONDS rc
  if [ "$left" -lt 15 ]; then
    note "stage $name: skipped (deadline reached)"
    return
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  timeout --kill-after=10 "$cap" bash -c "$command"
  rc=$?
  if [ $rc -eq 0 ]; then
    note "stage $name: ok ($((SECONDS - t0)) s)"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    note "stage $name: TIMED OUT after ${cap} s"; STATUS=1
  else
    note "stage $name: FAILED with $rc ($((SECONDS - t0)) s)"; STATUS=1
  fi
}
skip() { note "stage $1: skipped ($2)"; }

environment() {
  {
    date -u +%Y-%m-%dT%H:%M:%SZ
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
    nvidia-smi 2>&1 | head -20 || true
    nvcc --version 2>&1 | tail -2 || true
    gcc --version 2>&1 | head -1
    "$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version() if torch.cuda.is_available() else None)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "sm", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count,
          "memory GiB", round(p.total_memory / 2**30, 1))
EOF
  } > "$OUT/env.txt" 2>&1
}

build() {
  TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16} FORCE_CUDA=1 \
    "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1 &&
  "$PY" -c "import rnnkernels, sys; info = rnnkernels.build_info(); print(info['cuda']); sys.exit(0 if info['cuda'] else 'no CUDA kernels in this build')" >> "$OUT/build.log" 2>&1
}

memcheck_run() {
  local sanitizer
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
  if [ -z "$sanitizer" ]; then echo "compute-sanitizer not found" > "$OUT/memcheck.log"; return 1; fi
  "$sanitizer" --tool memcheck --error-exitcode 1 --print-limit 20 \
    "$PY" bench/gpu_checks.py smoke --device cuda --out /tmp/rk_memcheck_smoke.jsonl > "$OUT/memcheck.log" 2>&1
}

export OUT PY
export -f environment build memcheck_run

note "=== first contact: $(date -u +%Y-%m-%dT%H:%M:%SZ), GPU: $GPU_NAME, deadline ${DEADLINE_S:-480} s"
stage env 30 environment
if [ $HAS_GPU -eq 1 ]; then
  stage build 240 build
  stage smoke 90 '"$PY" bench/gpu_checks.py smoke --device cuda --out "$OUT/smoke.jsonl" > /dev/null'
  stage steps 120 '"$PY" bench/gpu_checks.py steps --device cuda --out "$OUT/steps.jsonl" > /dev/null'
  stage tests 120 '"$PY" -m pytest -q -x -rs -m "not slow" tests/test_cuda.py > "$OUT/tests.log" 2>&1'
  stage memcheck 90 memcheck_run
else
  skip build "no GPU: nvidia-smi finds none; CI builds the CPU extension itself"
  stage smoke 90 '"$PY" bench/gpu_checks.py smoke --device cpu --out "$OUT/smoke.jsonl" > /dev/null'
  stage steps 60 '"$PY" bench/gpu_checks.py steps --device cpu --out "$OUT/steps.jsonl" > /dev/null'
  skip tests "no GPU"
  skip memcheck "no GPU"
fi
tar -czf "$OUT/results.tar.gz" -C "$OUT" --exclude results.tar.gz . 2>/dev/null || true
note "=== done in ${SECONDS} s, status $STATUS"
exit $STATUS
