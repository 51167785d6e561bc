"""Coverage-guided fuzzing of the modules against torch.nn (issue 17, point 3).

    python tests/fuzz/fuzz_modules.py tests/fuzz/corpus -max_total_time=600

atheris turns the input bytes into the choices of tests/degenerate.py's case generators
(module kind, sizes 0 to 3, layers, directions, batch_first, bias, proj_size,
nonlinearity, dense / unbatched / hand-built PackedSequence input, hx form, data seed), and
the property is tests/degenerate.py's compare: the same accept/refuse decision and
exception type as torch.nn, then the same outputs and every gradient (float64,
assert_close defaults); a mismatch raises and a crash kills the process, and atheris
saves the input that did it. rnnkernels' Python (the argument checks that decide accept
or refuse) is instrumented, so inputs reaching new branches are kept. The C++ ops are not
instrumented: their coverage would need a libFuzzer build of the extension.

RNNKERNELS_FUZZ_SELFTEST=1 perturbs our outputs by 1e-3, to show a mismatch is caught.
"""

import os
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: degenerate.py

os.environ.setdefault("RNNKERNELS_CPU_ENGINE", "rnnkernels")  # compare our kernels
with atheris.instrument_imports(include=["rnnkernels"]):
    import rnnkernels

import torch  # noqa: E402

import degenerate  # noqa: E402

torch.set_num_threads(1)


class BytesChoices:
    """The random.Random methods the generators use, drawn from the fuzzer's bytes."""

    def __init__(self, data: bytes):
        self.provider = atheris.FuzzedDataProvider(data)

    def choice(self, options):
        return options[self.provider.ConsumeIntInRange(0, len(options) - 1)]

    def random(self):
        return self.provider.ConsumeProbability()

    def randrange(self, stop):
        return self.provider.ConsumeIntInRange(0, stop - 1)


if os.environ.get("RNNKERNELS_FUZZ_SELFTEST") == "1":
    _forward = rnnkernels.nn._RecurrentForward._run

    def _perturbed(self, *args, **kwargs):
        output, hidden = _forward(self, *args, **kwargs)
        if isinstance(output, torch.Tensor) and output.numel():
            output = output + 1e-3
        return output, hidden

    rnnkernels.nn._RecurrentForward._run = _perturbed


def test_one_input(data: bytes) -> None:
    choices = BytesChoices(data)
    make = degenerate.random_cell_case if choices.random() < 0.3 else degenerate.random_layer_case
    degenerate.compare(*make(choices))


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
