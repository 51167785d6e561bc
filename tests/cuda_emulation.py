"""The CPU emulation build of the CUDA backend, built once per test process.

csrc/cuda/recurrence_cuda.cpp and the kernel templates compiled by g++ with the stand-ins
of tests/ci_include/emulation (CUDA runtime, fp16/bf16 conversions, a launch that runs
every thread of a grid in turn, at most 2 blocks so that every grid-stride loop iterates)
and registered as torch.ops.rnnkernels_cuda_emulation.*: the very time loops, row
bookkeeping and kernel bodies of the CUDA ops, on CPU tensors. Needs only a C++ compiler.
tests/test_cuda_compile.py checks the ops against the CPU ops and float64;
tests/test_cuda_paths_emulated.py drives rnnkernels.functional's CUDA branches with them.
With RNNKERNELS_SANITIZE set (tools/sanitize.sh sets it) it is compiled with setup.py's
sanitizer flags, at -O0 still.
"""

from __future__ import annotations

import atexit
import os
import re
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
EMULATION_DIR = ROOT / "tests" / "ci_include" / "emulation"

_lock = threading.Lock()
_built = None


def schemas_inc() -> str:
    """The m.def(...) calls of TORCH_LIBRARY(rnnkernels, m) in csrc/op_library.cpp."""
    source = (CSRC / "op_library.cpp").read_text()
    block = source[source.index("TORCH_LIBRARY(rnnkernels, m)"):]
    block = block[:block.index("\n}\n")]
    defs = re.findall(r'm\.def\(\s*((?:"(?:[^"\\]|\\.)*"\s*)+)\);', block)
    names = {re.match(r'"(\w+)\(', d).group(1) for d in defs}
    assert {"rnn_layer", "rnn_layer_backward"} <= names, sorted(names)
    return "".join(f"m.def({d.strip()});\n" for d in defs)


def sanitize_flags() -> tuple[list[str], list[str]]:
    """(compile flags, link flags) of setup.py's _sanitize_flags() for RNNKERNELS_SANITIZE
    except its -O1 (tests/test_build_options.py compares the two)."""
    wanted = [w.strip() for w in os.environ.get("RNNKERNELS_SANITIZE", "").split(",") if w.strip()]
    if not wanted:
        return [], []
    unknown = set(wanted) - {"address", "undefined"}
    assert not unknown, f"RNNKERNELS_SANITIZE: unknown sanitizer(s) {sorted(unknown)}"
    sanitize = "-fsanitize=" + ",".join(s for s in ("address", "undefined") if s in wanted)
    compile_flags = [sanitize, "-fno-omit-frame-pointer", "-g1"]
    if "undefined" in wanted:
        compile_flags.append("-fno-sanitize-recover=undefined")
    return compile_flags, [sanitize]


def build():
    """The emulation extension (torch.ops.rnnkernels_cuda_emulation.* registered), compiled
    on the first call of this process into a temporary directory; thread-safe."""
    global _built
    with _lock:
        if _built is None:
            from torch.utils.cpp_extension import load

            tmp = tempfile.TemporaryDirectory(prefix="rnnkernels_cuda_emulation_")
            atexit.register(tmp.cleanup)
            build_dir = tmp.name
            sanitize_cflags, sanitize_ldflags = sanitize_flags()
            (Path(build_dir) / "schemas.inc").write_text(schemas_inc())
            _built = load(
                name="rnnkernels_cuda_emulation",
                sources=[str(EMULATION_DIR / "rnnkernels_cuda_emulation.cpp")],
                extra_include_paths=[str(EMULATION_DIR), str(CSRC), str(CSRC / "include"), build_dir],
                extra_cflags=["-O0", "-DRNNKERNELS_CUDA_EMULATION", "-DRNNKERNELS_MAX_BLOCKS=2",
                              "-fvisibility=hidden", "-Wall", "-Werror", "-Wno-unused-function",
                              "-Wno-unknown-pragmas"] + sanitize_cflags,
                extra_ldflags=sanitize_ldflags,
                build_directory=build_dir, with_cuda=False, verbose=False)
        return _built
