"""Loads the compiled extension rnnkernels._C and refuses a missing or stale one."""

import os
from pathlib import Path

import torch

_ROOT = Path(__file__).resolve().parent.parent
REBUILD_HINT = (
    "Rebuild it from the repository root with\n"
    "    pip install --no-build-isolation -e .\n"
    "(or `python setup.py build_ext --inplace`), using the same Python and torch as this process."
)


def _load():
    try:
        from . import _C  # noqa: F401  (also registers torch.ops.rnnkernels.*)
    except ImportError as err:
        raise ImportError(
            f"rnnkernels: the compiled extension rnnkernels._C could not be loaded ({err}).\n"
            + REBUILD_HINT
        ) from err
    info = _C.build_info()
    built_for = info["torch_version"]
    running = torch.__version__.split("+")[0]
    if built_for != running:
        raise ImportError(
            f"rnnkernels: rnnkernels._C was built against torch {built_for} but torch {running} "
            "is installed; the extension is stale.\n" + REBUILD_HINT
        )
    csrc = _ROOT / "csrc"
    if csrc.is_dir() and os.environ.get("RNNKERNELS_ALLOW_STALE", "0") != "1":
        from ._source_hash import source_hash

        current = source_hash(csrc)
        if current != info["source_hash"]:
            raise ImportError(
                f"rnnkernels: rnnkernels._C is stale: it was built from sources with hash "
                f"{info['source_hash']}, but {csrc} now hashes to {current}.\n" + REBUILD_HINT
                + "\n(Set RNNKERNELS_ALLOW_STALE=1 to import it anyway.)"
            )
    return _C


_C = _load()
