#!/usr/bin/env bash
# Builds rnnkernels._C with AddressSanitizer and UndefinedBehaviorSanitizer in a copy of this
# checkout (the normal build in rnnkernels/ is left alone) and runs tests under them, once
# per CPU kernel variant forced through ATEN_CPU_CAPABILITY, plus the CUDA emulation build
# (tests/cuda_emulation.py) compiled with the same sanitizers.
#
#   tools/sanitize.sh [--suite ci|full] [--isas LIST] [--sanitize LIST] [--dest DIR]
#                     [--build-only] [-- PYTEST_ARGS...]
#
#   --suite full  (default) per forced variant: tests/test_equivalence.py,
#                 tests/test_bad_input.py, tests/isa_subset.py, tests/test_quantized.py
#                 (but its child-process tests); then the CUDA emulation
#                 tests (tests/test_cuda_compile.py but its nvcc compile checks,
#                 tests/test_cuda_paths_emulated.py)
#   --suite ci    per forced variant: tests/isa_subset.py and tests/test_bad_input.py,
#                 the int8 simulation and bad-input tests of tests/test_quantized.py;
#                 then a slice of the emulation tests (what tests/test_sanitizers.py runs in CI)
#   --isas        RNNKERNELS_ISAS of the build (default: every variant for this machine)
#   --sanitize    RNNKERNELS_SANITIZE of the build (default: address,undefined)
#   --dest        the copy (default: ${TMPDIR:-/tmp}/rnnkernels-sanitize); kept between
#                 runs, so a rebuild recompiles only what changed
#   -- ARGS       run `pytest ARGS` (paths relative to the checkout) under the sanitizers
#                 once per forced variant instead of a suite
#
# Exit status 0 only if the build and every run pass; a sanitizer report aborts the
# process it occurs in (halt_on_error, -fno-sanitize-recover), which fails that run.
# Run with the Python whose torch the extension is built against (e.g. the venv active).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SUITE=full
ISAS="${RNNKERNELS_ISAS:-}"
SANITIZE=address,undefined
DEST="${TMPDIR:-/tmp}/rnnkernels-sanitize"
BUILD_ONLY=0
PYTEST_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --suite) SUITE="$2"; shift 2 ;;
    --isas) ISAS="$2"; shift 2 ;;
    --sanitize) SANITIZE="$2"; shift 2 ;;
    --dest) DEST="$2"; shift 2 ;;
    --build-only) BUILD_ONLY=1; shift ;;
    --) shift; PYTEST_ARGS=("$@"); break ;;
    *) echo "tools/sanitize.sh: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
case "$SUITE" in ci|full) ;; *) echo "tools/sanitize.sh: --suite ci|full" >&2; exit 2 ;; esac
PYTHON="${PYTHON:-python}"
CXX="${CXX:-c++}"
if [[ "$(realpath -m "$DEST")" == "$ROOT" ]]; then
  echo "tools/sanitize.sh: --dest must not be the checkout itself" >&2; exit 2
fi

# ------------------------------------------------------------------ copy
# The tracked and untracked-but-not-ignored files, as git sees them. A file is rewritten
# only when its content differs (it then gets a new mtime, so ninja recompiles what
# depends on it, also when an older version comes back); files the checkout no longer has
# are removed, build/ (the object files) is kept, and the module is removed so that
# setuptools relinks it.
start=$SECONDS
mkdir -p "$DEST/build"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard) | "$PYTHON" -c '
import os, shutil, sys
from pathlib import Path
root, dest = Path(sys.argv[1]), Path(sys.argv[2])
wanted = {name for name in sys.stdin.read().split("\0") if name and (root / name).is_file()}
for name in wanted:
    src, dst = root / name, dest / name
    if not dst.is_file() or dst.read_bytes() != src.read_bytes():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        shutil.copymode(src, dst)
for path in list(dest.rglob("*")):
    rel = path.relative_to(dest).as_posix()
    if rel == "build" or rel.startswith("build/") or path.is_dir():
        continue
    if rel not in wanted:
        path.unlink()
' "$ROOT" "$DEST"

# ------------------------------------------------------------------ build
echo "== sanitize: building in $DEST (RNNKERNELS_SANITIZE=$SANITIZE RNNKERNELS_ISAS=${ISAS:-all})"
(cd "$DEST" && RNNKERNELS_SANITIZE="$SANITIZE" RNNKERNELS_ISAS="$ISAS" \
   RNNKERNELS_SKIP_CUDA_BUILD=1 "$PYTHON" setup.py -q build_ext --inplace \
   --build-temp build/sanitize-temp --build-lib build/sanitize-lib) > "$DEST/build/sanitize.log" 2>&1 \
  || { tail -n 60 "$DEST/build/sanitize.log"; echo "== sanitize: build failed" >&2; exit 1; }
echo "== sanitize: build took $((SECONDS - start)) s (log: $DEST/build/sanitize.log)"
[[ $BUILD_ONLY == 1 ]] && exit 0

# ------------------------------------------------------------------ environment
# The interpreter is not instrumented, so the ASan runtime must be loaded first
# (LD_PRELOAD). Python and torch keep memory alive at exit: no leak check. Tests that ask
# for impossible sizes expect torch's own out-of-memory error, so ASan's allocator returns
# null instead of reporting.
export RNNKERNELS_SANITIZE="$SANITIZE"  # tests/cuda_emulation.py builds with the same flags
if [[ ",$SANITIZE," == *,address,* ]]; then
  LIBASAN="$("$CXX" -print-file-name=libasan.so)"
  [[ -e "$LIBASAN" ]] || { echo "tools/sanitize.sh: libasan.so not found by $CXX" >&2; exit 1; }
  # libstdc++ right after it: ASan's __cxa_throw interceptor looks the real one up when
  # the runtime starts, and Python does not link libstdc++ (without it the first C++
  # exception, e.g. a TORCH_CHECK, dies in "CHECK failed ... real___cxa_throw").
  LIBSTDCXX="$("$CXX" -print-file-name=libstdc++.so)"
  export LD_PRELOAD="$LIBASAN:$LIBSTDCXX${LD_PRELOAD:+:$LD_PRELOAD}"
  export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
fi
# ASan reports go to files, one per process (children that report into pipes included),
# printed at the end. UBSan's, with ASan in the same runtime, go to stderr whatever
# log_path says; pytest runs with --capture=sys so that native stderr is not captured
# (and lost when the process aborts) but reaches this script's output.
REPORTS="$DEST/build/sanitizer-reports"
rm -rf "$REPORTS" && mkdir -p "$REPORTS"
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}log_path=$REPORTS/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$REPORTS/ubsan${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export PYTHONPATH="$DEST${PYTHONPATH:+:$PYTHONPATH}"
export RNNKERNELS_SKIP_CUDA_BUILD=1
cd "$DEST"

# The module under test is the sanitized one in the copy; which variants it holds.
BUILT=$("$PYTHON" - "$DEST" "$SANITIZE" <<'PY'
import subprocess, sys
import rnnkernels
dest, sanitize = sys.argv[1], sys.argv[2]
assert rnnkernels._C.__file__.startswith(dest + "/"), rnnkernels._C.__file__
needed = subprocess.run(["readelf", "-d", rnnkernels._C.__file__], capture_output=True,
                        text=True).stdout
for name, lib in (("address", "libasan"), ("undefined", "libubsan")):
    if name in sanitize.split(","):
        assert lib in needed, f"{rnnkernels._C.__file__} does not link {lib}"
print(" ".join(rnnkernels.build_info()["cpu_isas"]))
PY
)
BEST=$(env -u ATEN_CPU_CAPABILITY "$PYTHON" -c \
  "import torch; print(torch.backends.cpu.get_cpu_capability().lower())")
declare -A RANK=([default]=0 [avx2]=1 [avx512]=2)
FORCED=()
for isa in default avx2 avx512; do
  if [[ " $BUILT " == *" $isa "* ]] && (( ${RANK[$isa]} <= ${RANK[$BEST]:-0} )); then
    FORCED+=("$isa")
  fi
done
echo "== sanitize: built variants: $BUILT; forcing: ${FORCED[*]} (this CPU: $BEST)"

status=0
run() {  # run <label> <isa or ""> pytest args...
  local label="$1" isa="$2"; shift 2
  local t0=$SECONDS
  echo "== sanitize: $label"
  if [[ -n "$isa" ]]; then
    ATEN_CPU_CAPABILITY="$isa" RNNKERNELS_EXPECTED_ISA="$isa" \
      "$PYTHON" -m pytest -q -p no:cacheprovider --capture=sys "$@" || status=1
  else
    "$PYTHON" -m pytest -q -p no:cacheprovider --capture=sys "$@" || status=1
  fi
  echo "== sanitize: $label took $((SECONDS - t0)) s"
}

if [[ ${#PYTEST_ARGS[@]} -gt 0 ]]; then
  for isa in "${FORCED[@]}"; do run "$isa: pytest ${PYTEST_ARGS[*]}" "$isa" "${PYTEST_ARGS[@]}"; done
elif [[ $SUITE == full ]]; then
  for isa in "${FORCED[@]}"; do
    run "$isa: equivalence, bad input, ISA subset, int8" "$isa" \
      tests/test_equivalence.py tests/test_bad_input.py tests/isa_subset.py \
      tests/test_quantized.py -k "not kernel_paths and not expected_int8"
  done
  # Not test_cuda_source_compiles: nvcc, run with the ASan runtime preloaded, segfaults.
  run "CUDA emulation" "" tests/test_cuda_compile.py tests/test_cuda_paths_emulated.py \
    -k "not test_cuda_source_compiles"
else
  for isa in "${FORCED[@]}"; do
    run "$isa: ISA subset, bad input" "$isa" tests/isa_subset.py tests/test_bad_input.py
    run "$isa: int8 (simulation, bad input)" "$isa" tests/test_quantized.py \
      -k "simulation or bad_input or non_finite or empty_batch"
  done
  run "CUDA emulation (slice)" "" tests/test_cuda_paths_emulated.py -k "lstm or gru"
fi
if compgen -G "$REPORTS/*" > /dev/null; then
  status=1
  for report in "$REPORTS"/*; do
    echo "== sanitize: report $report"
    head -n 80 "$report"
  done
fi
echo "== sanitize: total $((SECONDS - start)) s; $([[ $status == 0 ]] && echo clean || echo FAILED)"
exit $status
