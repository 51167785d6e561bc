"""python bench/run.py [ARGS]: `python -m rnnkernels.bench ARGS`, writing its results under
bench/results/ unless --out says otherwise. Examples:

    python bench/run.py --preset quick
    python bench/run.py --preset core --memory
    python bench/run.py plot bench/results/core-<date>.jsonl
    python bench/run.py compare bench/results/old.jsonl bench/results/new.jsonl
"""

import datetime
import sys
from pathlib import Path

from rnnkernels.bench.cli import COMMANDS, main

RESULTS = Path(__file__).resolve().parent / "results"


def _with_default_out(argv: list[str]) -> list[str]:
    if (argv and argv[0] in COMMANDS and argv[0] != "run") or "--out" in argv or "--no-save" in argv \
            or "--dry-run" in argv or "-h" in argv or "--help" in argv:
        return argv
    name = argv[argv.index("--preset") + 1] if "--preset" in argv[:-1] else "grid"
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return argv + ["--out", str(RESULTS / f"{name}-{stamp}.jsonl")]


if __name__ == "__main__":
    sys.exit(main(_with_default_out(sys.argv[1:])))
