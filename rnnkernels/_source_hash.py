"""Hash of the C++/CUDA sources, compiled into _C so that a stale build is detected.

Imported by setup.py by file path (before the package exists), so it uses only the
standard library.
"""

import hashlib
from pathlib import Path

_SUFFIXES = {".h", ".cuh", ".cpp", ".cu", ".txt"}


def source_hash(csrc: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(csrc).rglob("*") if p.suffix in _SUFFIXES):
        digest.update(path.relative_to(csrc).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]
