"""Benchmark cases and the named presets (grids of cases).

A case is one cell type, shape, mode, dtype, device and thread count. Its ``key`` names
it across runs, so results of two runs (commits, machines) can be matched by ``compare``.
Importing this module needs torch only, not the compiled extension.

Layer cases (lstm, gru, rnn, rnn_relu) run a whole sequence [T, B, I] through torch.nn.LSTM
/GRU/RNN and rnnkernels' twin; step cases (lstm_cell, gru_cell, rnn_cell) make ONE call of
torch.nn.LSTMCell/GRUCell/RNNCell and rnnkernels' twin on x [B, I] with a given state,
so their T is 1 (one layer, one direction, dense, no projection).

The dtype is a precision: float32, float64, bfloat16 and float16 convert both modules and
the input to it (``module.to(dtype)``); autocast_bfloat16 and autocast_float16 keep float32
modules and input and run the forward under ``torch.autocast(device, dtype)``, the backward
outside it, as a user's training step does.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import zlib
from dataclasses import dataclass

LAYER_CELLS = ("lstm", "gru", "rnn", "rnn_relu")  # rnn: tanh nonlinearity
STEP_CELLS = ("lstm_cell", "gru_cell", "rnn_cell")  # torch.nn.LSTMCell, GRUCell, RNNCell
CELLS = LAYER_CELLS + STEP_CELLS
MODES = ("inference", "training")
AUTOCAST_PREFIX = "autocast_"
CONVERTED_DTYPES = ("float32", "float64", "bfloat16", "float16")
# int8: rnnkernels.quantize_dynamic of the float32 module (CPU inference), beside torch.nn
# float32 and, as peers, torch.nn bfloat16, torch's dynamic int8 and the `--peers` runtimes.
DTYPES = CONVERTED_DTYPES + ("autocast_bfloat16", "autocast_float16", "int8")
DEVICES = ("cpu", "cuda")

# Gates per cell: LSTM i, f, g, o; GRU r, z, n; Elman RNN one.
GATES = {"lstm": 4, "gru": 3, "rnn": 1, "rnn_relu": 1, "lstm_cell": 4, "gru_cell": 3, "rnn_cell": 1}
# Floats per hidden unit and row that rnnkernels keeps for the backward (workspace
# [D, N, S]): LSTM i, f, g, o, c; GRU r, z, n, W_hn h + b_hn; RNN nothing; a *Cell the
# same as its layer (one step of the same op). Must agree with
# rnnkernels.ops.WORKSPACE_PER_HIDDEN (a test checks).
WORKSPACE_PER_HIDDEN = {"lstm": 5, "gru": 4, "rnn": 0, "rnn_relu": 0,
                        "lstm_cell": 5, "gru_cell": 4, "rnn_cell": 0}
# Bytes per element of a case's compute dtype (autocast cases: the autocast dtype).
ELEMENT_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2, "int8": 1}


@dataclass(frozen=True)
class Case:
    """One benchmark case. Input is time-major [T, B, I]; ``packed`` feeds a PackedSequence
    of B sequences whose lengths are drawn uniformly from [ceil(T/2), T] (one of them T)."""

    cell: str
    T: int
    B: int
    I: int  # noqa: E741  (the issue's name for the input size)
    H: int
    layers: int = 1
    bidirectional: bool = False
    proj: int = 0  # LSTM proj_size; 0 for none
    mode: str = "inference"
    dtype: str = "float32"
    device: str = "cpu"
    threads: int = 2
    packed: bool = False

    def __post_init__(self):
        problems = []
        if self.cell not in CELLS:
            problems.append(f"cell must be one of {CELLS}, got {self.cell!r}")
        if self.mode not in MODES:
            problems.append(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.device not in DEVICES:
            problems.append(f"device must be one of {DEVICES}, got {self.device!r}")
        for name in ("T", "B", "I", "H", "layers", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if self.proj < 0 or (self.proj > 0 and self.cell != "lstm"):
            problems.append(f"proj (proj_size) must be 0, or > 0 for lstm only; got {self.proj} for {self.cell}")
        if self.proj >= self.H > 0 and self.proj > 0:
            problems.append(f"proj ({self.proj}) must be smaller than H ({self.H})")
        if self.is_step_cell and (self.T, self.layers, self.bidirectional, self.proj, self.packed) != (
                1, 1, False, 0, False):
            problems.append(f"{self.cell} is one call of one step: T and layers must be 1, "
                            "unidirectional, dense, no proj")
        if self.dtype == "int8" and (self.device != "cpu" or self.mode != "inference"):
            problems.append("int8 cases are CPU inference (the int8 modules have no backward "
                            f"and no CUDA kernels); got {self.device} {self.mode}")
        if problems:
            raise ValueError("invalid benchmark case: " + "; ".join(problems))

    @property
    def is_step_cell(self) -> bool:
        """A *Cell case: one call on x [B, I] with a given state."""
        return self.cell in STEP_CELLS

    @property
    def autocast_dtype(self) -> str | None:
        """The dtype the forward runs under torch.autocast with; None for a converted case."""
        return self.dtype[len(AUTOCAST_PREFIX):] if self.dtype.startswith(AUTOCAST_PREFIX) else None

    @property
    def module_dtype(self) -> str:
        """The dtype of the modules and the input: float32 under autocast and for int8."""
        return "float32" if self.autocast_dtype or self.dtype == "int8" else self.dtype

    @property
    def compute_dtype(self) -> str:
        """The dtype of the matrix products: the autocast dtype, else the case's."""
        return self.autocast_dtype or self.dtype

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def gates(self) -> int:
        return GATES[self.cell]

    @property
    def output_size(self) -> int:
        """P: the size of h (proj_size when LSTM has a projection, else H)."""
        return self.proj if self.proj > 0 else self.H

    @property
    def element_bytes(self) -> int:
        return ELEMENT_BYTES[self.compute_dtype]

    @property
    def key(self) -> str:
        """A stable name of the case, the same in every run and on every machine."""
        return "|".join([
            self.cell, self.mode, f"T{self.T}", f"B{self.B}", f"I{self.I}", f"H{self.H}",
            f"L{self.layers}", "bi" if self.bidirectional else "uni", f"proj{self.proj}",
            self.dtype, self.device, f"threads{self.threads}", "packed" if self.packed else "dense",
        ])

    def label(self) -> str:
        """A short human label for tables and progress."""
        dtype = "" if self.dtype == "float32" else f" {self.dtype}"
        if self.is_step_cell:
            return f"{self.cell} {self.mode[:5]} B={self.B} I={self.I} H={self.H}{dtype}"
        extra = []
        if self.layers > 1:
            extra.append(f"L{self.layers}")
        if self.bidirectional:
            extra.append("bi")
        if self.proj:
            extra.append(f"proj{self.proj}")
        if self.packed:
            extra.append("packed")
        tail = (" " + " ".join(extra)) if extra else ""
        return f"{self.cell} {self.mode[:5]} T={self.T} B={self.B} I={self.I} H={self.H}{tail}{dtype}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Case":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def sequence_lengths(case: Case) -> list[int]:
    """Lengths of the B sequences, sorted longest first. Dense cases: all T. Packed: uniform
    in [ceil(T/2), T], the first set to T so the case has T steps; seeded from the case's
    geometry, so every run and machine draws the same lengths."""
    if not case.packed:
        return [case.T] * case.B
    seed = zlib.crc32(f"{case.T}|{case.B}|packed-lengths".encode())
    rng = random.Random(seed)
    low = math.ceil(case.T / 2)
    lengths = [rng.randint(low, case.T) for _ in range(case.B)]
    lengths[0] = case.T
    return sorted(lengths, reverse=True)


def batch_sizes(case: Case) -> list[int]:
    """Rows per step (PackedSequence.batch_sizes): B at every step for a dense case."""
    lengths = sequence_lengths(case)
    return [sum(1 for n in lengths if n > t) for t in range(case.T)]


# ---------------------------------------------------------------- presets

# (T, B, I, H, layers, bidirectional) of the core benchmark (issue 2, point 7).
CORE_GEOMETRIES = [
    (100, 1, 256, 256, 1, False),
    (100, 32, 256, 256, 1, False),
    (100, 64, 512, 512, 1, False),
    (200, 16, 128, 128, 1, False),
    (50, 128, 1024, 1024, 1, False),
    (1000, 8, 64, 64, 1, False),
    (100, 32, 256, 256, 2, True),
]

# The README's main-job command: the core grid without its largest shape (50, 128, 1024,
# 1024), 9 repeats; about a minute on a quiet 2-core machine, two when it is shared.
QUICK_GEOMETRIES = [g for g in CORE_GEOMETRIES if g[:4] != (50, 128, 1024, 1024)]

GPU_DTYPES = ("float32", "bfloat16", "float16")


def _square(T, B, H, layers=1, bidirectional=False):
    return (T, B, H, H, layers, bidirectional)


# GPU grids (the CUDA issue): compared against cuDNN.
GPU_GRIDS = {
    "gpu-default": [_square(100, 64, 512)],  # PyTorch's own RNN benchmark default
    "gpu-latency": [_square(256, b, h) for b in (1, 8, 16) for h in (256, 512, 1024)],
    "gpu-batch": [_square(100, 64, h) for h in (256, 1024)],
    "gpu-large": [_square(100, 256, 1024)],
    "gpu-bidir": [_square(100, 64, 512, layers=2, bidirectional=True)],
}
GPU_PACKED_GEOMETRIES = [_square(100, 64, 512)]


def _step(B, H):
    """A *Cell geometry: one step (T = 1) of batch B, I = H."""
    return _square(1, B, H)


# The portable preset (issue 15, point 6): layers in float32, bfloat16 (converted) and
# under bfloat16 autocast, at two core shapes (and LSTM at a third), and the *Cells at
# a latency and a batched size in float32 and bfloat16.
PORTABLE_DTYPES = ("float32", "bfloat16", "autocast_bfloat16")
PORTABLE_LAYER_GEOMETRIES = [(100, 32, 256, 256, 1, False), (200, 16, 128, 128, 1, False)]
PORTABLE_LSTM_GEOMETRIES = [(100, 64, 512, 512, 1, False)]
PORTABLE_STEP_GEOMETRIES = [_step(1, 256), _step(16, 128)]
# The cells preset: bench/cell_step.py's sizes, (B, H = I).
CELLS_STEP_GEOMETRIES = [_step(1, 256), _step(16, 128), _step(1, 32), _step(64, 512)]
REDUCED_DTYPES = ("float32", "bfloat16")
# The int8 preset (issue 21): LSTM and GRU inference at the shapes and at B = 1,
# the *Cells one step at B = 1 and 16; beside torch.nn float32 and the int8 peers.
INT8_LAYER_GEOMETRIES = [(100, 64, 512, 512, 1, False), (100, 32, 256, 256, 1, False),
                         (200, 16, 128, 128, 1, False), (100, 1, 256, 256, 1, False),
                         (100, 1, 512, 512, 1, False)]
INT8_STEP_GEOMETRIES = [_step(1, 256), _step(16, 256)]


@dataclass(frozen=True)
class Grid:
    """One Cartesian product of a preset: geometries x cells x modes x dtypes x packing.
    A grid holds layer cells or *Cells, not both (a *Cell geometry has T = 1)."""

    geometries: tuple  # of (T, B, I, H, layers, bidirectional)
    cells: tuple = ("lstm", "gru", "rnn")
    modes: tuple = MODES
    dtypes: tuple = ("float32",)
    packed: tuple = (False,)  # one entry per packing variant to run

    def __post_init__(self):
        if len({cell in STEP_CELLS for cell in self.cells}) != 1:
            raise ValueError(f"a grid holds layer cells or *Cells, not both: {self.cells}")

    @property
    def step_cells(self) -> bool:
        return self.cells[0] in STEP_CELLS


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    grids: tuple  # of Grid
    device: str = "cpu"
    repeats: int | None = None  # None: the CLI's default


def _presets() -> dict[str, Preset]:
    presets = {
        "quick": Preset("quick", "the core grid less its largest shape: the README's main-job "
                        "command (1 to 2 min on 2 cores)", (Grid(tuple(QUICK_GEOMETRIES)),), repeats=9),
        "core": Preset("core", "the core CPU benchmark of issue 2: 7 shapes x RNN/LSTM/GRU x "
                       "inference/training", (Grid(tuple(CORE_GEOMETRIES)),)),
        "cpu-packed": Preset("cpu-packed", "PackedSequence input on CPU (lengths uniform in "
                             "[T/2, T])", (Grid(tuple(g for g in CORE_GEOMETRIES if g[4] == 1 and g[2] <= 512),
                                                packed=(True,)),)),
        "portable": Preset(
            "portable", "float32, bfloat16 and bfloat16 autocast, layers and *Cells: what a CPU "
            "without our tuning gets (estimated under 10 min on a quiet 2-core machine)",
            (Grid(tuple(PORTABLE_LAYER_GEOMETRIES), dtypes=PORTABLE_DTYPES),
             Grid(tuple(PORTABLE_LSTM_GEOMETRIES), cells=("lstm",), dtypes=PORTABLE_DTYPES),
             Grid(tuple(PORTABLE_STEP_GEOMETRIES), cells=STEP_CELLS, dtypes=REDUCED_DTYPES)),
            repeats=5),
        "int8": Preset("int8", "int8 inference (rnnkernels.quantize_dynamic) of LSTM and GRU "
                       "layers and cells against torch.nn float32, bfloat16 and dynamic int8 "
                       "(add --peers onnxruntime openvino for the runtimes)",
                       (Grid(tuple(INT8_LAYER_GEOMETRIES), cells=("lstm", "gru"),
                             modes=("inference",), dtypes=("int8",)),
                        Grid(tuple(INT8_STEP_GEOMETRIES), cells=("lstm_cell", "gru_cell"),
                             modes=("inference",), dtypes=("int8",)))),
        "cells": Preset("cells", "one step of LSTMCell/GRUCell/RNNCell, float32 and bfloat16 "
                        "(bench/cell_step.py's sizes)",
                        (Grid(tuple(CELLS_STEP_GEOMETRIES), cells=STEP_CELLS, dtypes=REDUCED_DTYPES),)),
    }
    for name, geometries in GPU_GRIDS.items():
        presets[name] = Preset(name, f"CUDA grid {name[4:]} vs cuDNN", (Grid(tuple(geometries), dtypes=GPU_DTYPES),),
                               device="cuda")
    presets["gpu-packed"] = Preset("gpu-packed", "CUDA, PackedSequence input (lengths uniform "
                                   "in [T/2, T]) vs cuDNN",
                                   (Grid(tuple(GPU_PACKED_GEOMETRIES), dtypes=GPU_DTYPES, packed=(True,)),),
                                   device="cuda")
    everything = [g for name in GPU_GRIDS for g in GPU_GRIDS[name]]
    presets["gpu"] = Preset("gpu", "all CUDA grids (packed input included) vs cuDNN",
                            (Grid(tuple(everything), dtypes=GPU_DTYPES),) + presets["gpu-packed"].grids,
                            device="cuda")
    return presets


PRESETS = _presets()


def preset_cases(name: str, threads: int = 2, cells=None, modes=None, dtypes=None,
                 device=None) -> list[Case]:
    """The cases of a preset; cells/modes/dtypes/device, when given, replace the preset's
    (cells in the grids of their kind: layer cells in the layer grids, *Cells in the *Cell
    grids)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    preset = PRESETS[name]
    cases = []
    for grid in preset.grids:
        grid_cells = [c for c in cells if (c in STEP_CELLS) == grid.step_cells] if cells else grid.cells
        cases += _grid(grid.geometries, grid_cells, modes or grid.modes, dtypes or grid.dtypes,
                       device or preset.device, threads, grid.packed)
    return _unique(cases)


def custom_cases(T, B, I, H, layers=(1,), bidirectional=(False,), proj=(0,), cells=("lstm",),  # noqa: E741
                 modes=("inference",), dtypes=("float32",), device="cpu", threads=2,
                 packed=False) -> list[Case]:
    """The Cartesian product of the given lists; I=None entries mean I = H. proj applies to
    lstm only; a *Cell takes one step of one dense unidirectional layer: its T is 1 whatever
    T says, and the other layer options leave it out."""
    cases = []
    for cell, mode, dtype, t, b, h, i, n_layers, bi, p in itertools.product(
            cells, modes, dtypes, T, B, H, I, layers, bidirectional, proj):
        if p and cell != "lstm":
            continue
        if cell in STEP_CELLS:
            if n_layers > 1 or bi or packed:
                continue
            t = 1
        cases.append(Case(cell=cell, T=t, B=b, I=h if i is None else i, H=h, layers=n_layers,
                          bidirectional=bi, proj=p, mode=mode, dtype=dtype, device=device,
                          threads=threads, packed=packed))
    return _unique(cases)


def _grid(geometries, cells, modes, dtypes, device, threads, packed_variants) -> list[Case]:
    cases = []
    for dtype, (t, b, i, h, layers, bi), cell, mode, packed in itertools.product(
            dtypes, geometries, cells, modes, packed_variants):
        cases.append(Case(cell=cell, T=t, B=b, I=i, H=h, layers=layers, bidirectional=bi,
                          mode=mode, dtype=dtype, device=device, threads=threads, packed=packed))
    return _unique(cases)


def _unique(cases: list[Case]) -> list[Case]:
    seen, out = set(), []
    for case in cases:
        if case.key not in seen:
            seen.add(case.key)
            out.append(case)
    return out
