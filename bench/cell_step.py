"""One step of each *Cell (rnnkernels.LSTMCell/GRUCell/RNNCell) beside torch.nn's: the
benchmark tool's `cells` preset in float32, 15 repeats, no lower bound, i.e.

    python -m rnnkernels.bench --preset cells --dtype float32 --repeats 15 --no-lb

(2 threads, the two interleaved block by block, medians of 15 blocks; inference under
inference_mode, training forward + backward). Further arguments go to the tool and win
over these (e.g. --dtype float32 bfloat16, --no-save).

Run: python bench/cell_step.py (the README quotes it, section "Limitations"). Its numbers
there were taken with this script's earlier stand-alone loop, whose training pass
backpropagated h'.sum() to a state that did not require grad; the tool backpropagates a
fixed gradient of h' to a state that does, as one step of an unrolled loop.
"""

import sys

from rnnkernels.bench.cli import main

CELL_STEP_ARGS = ["--preset", "cells", "--dtype", "float32", "--repeats", "15", "--no-lb"]

if __name__ == "__main__":
    sys.exit(main(CELL_STEP_ARGS + sys.argv[1:]))
