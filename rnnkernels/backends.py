"""Which engine runs a CPU call: rnnkernels' kernels or torch's own implementation.

    import rnnkernels
    rnnkernels.backends.cpu.engine = "auto"      # default; or "rnnkernels", "torch"
    rnnkernels.backends.cpu.benchmark = True     # measure both once per shape, like cudnn.benchmark
    with rnnkernels.backends.cpu.flags(engine="torch"):
        ...
    rnnkernels.backends.cpu.last_engine          # what the last CPU call ran, and why

Note [engine choice]
Per call the key is (cell, dtype, mode, T, B, I, H, layers, directions, proj, packed,
threads); mode is "training" when autograd records the call, else "inference"; dtype
is the module's ("float32", "bfloat16", ...) or "autocast_bfloat16" under autocast.
- engine "rnnkernels" / "torch": that engine, wherever it can run the call.
- engine "auto" with benchmark off (the default): the table of measurements in
  rnnkernels.engine_table for this CPU's class (cpu_class()): the nearest measured
  shape of the same cell, dtype and mode decides (distance in log B and log H; packed
  and dense are measured apart). A class, cell or dtype without measurements runs
  rnnkernels. The table holds the ratios of whole runs of `python -m rnnkernels.bench`
  with --engine rnnkernels, so "never slower" holds where the table was measured;
  elsewhere it is a guess, and benchmark=True replaces it by a measurement.
- engine "auto" with benchmark on: the first call of each key times both engines on
  that call's own tensors (forward, plus backward when training; interleaved, median
  of a few runs) and caches the faster one for the process (autotune_cache). The
  random state is restored afterwards, so dropout draws are as without the measurement.
Only calls both engines can run are routed: zoneout, the layer-normalised LSTM,
forward-mode AD, torch.func transforms and torch.compile tracing keep their routes
(functional.py). torch's engine is torch.nn's own call (_VF), so its results are
torch.nn's, bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass

import torch

ENGINES = ("auto", "rnnkernels", "torch")


@dataclass(frozen=True)
class EngineKey:
    cell: str  # lstm, gru, rnn_tanh, rnn_relu, lstm_cell, gru_cell, rnn_cell
    dtype: str  # float32, bfloat16, float16, float64, autocast_bfloat16, ...
    mode: str  # inference or training
    T: int
    B: int
    I: int  # noqa: E741
    H: int
    layers: int = 1
    directions: int = 1
    proj: int = 0
    packed: bool = False
    threads: int = 1


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_class() -> str:
    """The class of this CPU the engine table is keyed on: x86-amx (AMX-BF16 tiles, e.g.
    Intel Sapphire Rapids and later), x86-avx512-bf16 (AVX512-BF16 without AMX, e.g. AMD
    Zen 4/5), x86-avx512, x86-avx2, or other."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags = _cpu_flags()
    if "amx_bf16" in flags and "amx_tile" in flags:
        return "x86-amx"
    if capability.startswith("AVX512"):
        return "x86-avx512-bf16" if "avx512_bf16" in flags else "x86-avx512"
    if capability == "AVX2":
        return "x86-avx2"
    return "other"


def _env_engine() -> str:
    value = os.environ.get("RNNKERNELS_CPU_ENGINE", "auto")
    return value if value in ENGINES else "auto"


class CpuBackend:
    """rnnkernels.backends.cpu: the engine setting of CPU calls (Note [engine choice])."""

    def __init__(self):
        self._engine = _env_engine()
        self.benchmark = os.environ.get("RNNKERNELS_CPU_BENCHMARK", "0") == "1"
        self.autotune_cache: dict[EngineKey, dict] = {}
        self._last: tuple | None = None
        self._class = cpu_class()
        self._table_cache: dict[EngineKey, tuple[str, str]] = {}

    @property
    def engine(self) -> str:
        return self._engine

    @engine.setter
    def engine(self, value: str) -> None:
        if value not in ENGINES:
            raise ValueError(f"rnnkernels.backends.cpu.engine: expected one of {ENGINES}, "
                             f"got {value!r}")
        self._engine = value

    @property
    def cpu_class(self) -> str:
        return self._class

    @contextlib.contextmanager
    def flags(self, engine: str | None = None, benchmark: bool | None = None):
        """Sets engine and/or benchmark inside the block, restores both after it."""
        saved = self._engine, self.benchmark
        try:
            if engine is not None:
                self.engine = engine
            if benchmark is not None:
                self.benchmark = bool(benchmark)
            yield self
        finally:
            self._engine, self.benchmark = saved

    def state(self) -> dict:
        """The settings, this CPU's class and the last routed call (plain values)."""
        last = self.last_engine
        if last is not None:
            last = dict(last, key=asdict(last["key"]))
        return {"engine": self._engine, "benchmark": self.benchmark, "cpu_class": self._class,
                "autotuned_keys": len(self.autotune_cache), "last": last}

    def reset(self) -> None:
        """Forgets the autotuned choices and the last call (the settings stay)."""
        self.autotune_cache.clear()
        self._table_cache.clear()
        self._last = None

    def choose(self, key: tuple, run_ours=None, run_torch=None, grad_leaves=()) -> str:
        """"rnnkernels" or "torch" for a call with this key (EngineKey's fields as a tuple).
        run_ours/run_torch (no arguments, returning the call's tensors) are timed when
        benchmark is on."""
        if self._engine == "auto" and not self.benchmark:
            found = self._table_cache.get(key)  # the common case first: a cell loop's steps
            if found is None:
                found = self._table_cache[key] = _nearest_row_choice(self._class, EngineKey(*key))
            self._last = (found[0], found[1], key)
            return found[0]
        if self._engine != "auto":
            engine, reason = self._engine, "set by rnnkernels.backends.cpu.engine"
        elif self.benchmark and run_ours is not None:
            full_key = EngineKey(*key)
            found = self.autotune_cache.get(full_key)
            if found is None:
                found = autotune(run_ours, run_torch, grad_leaves)
                self.autotune_cache[full_key] = found
            engine, reason = found["engine"], "measured (benchmark=True): " + found["reason"]
        else:
            engine, reason = self.table_choice(key)  # benchmark on, no timing callables
        self._last = (engine, reason, key)
        return engine

    @property
    def last_engine(self) -> dict | None:
        """The last routed CPU call: {"engine", "reason", "key" (an EngineKey)}."""
        if self._last is None:
            return None
        engine, reason, key = self._last
        return {"engine": engine, "reason": reason, "key": EngineKey(*key)}

    def table_choice(self, key: tuple) -> tuple[str, str]:
        found = self._table_cache.get(key)
        if found is None:
            found = _nearest_row_choice(self._class, EngineKey(*key))
            self._table_cache[key] = found
        return found


def _nearest_row_choice(cls: str, key: EngineKey) -> tuple[str, str]:
    from .engine_table import ROWS

    rows = [r for r in ROWS if r["cpu_class"] == cls and r["cell"] == key.cell
            and r["dtype"] == key.dtype and r["mode"] == key.mode
            and r.get("packed", False) == key.packed]
    if not rows:
        return "rnnkernels", f"no measurement for {cls} {key.cell} {key.dtype} {key.mode}"

    def distance(row):
        return math.hypot(math.log2(max(row["B"], 1) / max(key.B, 1)),
                          math.log2(max(row["H"], 1) / max(key.H, 1)))

    row = min(rows, key=distance)
    engine = "torch" if row["nn_over_ours"] < 1.0 else "rnnkernels"
    return engine, (f"table {cls}: nearest measured B={row['B']} H={row['H']} T={row['T']}: "
                    f"torch.nn/rnnkernels {row['nn_over_ours']:.2f}x ({row['cpu_model']})")


def _time_once(run, grad_leaves) -> float:
    start = time.perf_counter()
    result = run()
    if grad_leaves:
        outputs = [t for t in (result if isinstance(result, (tuple, list)) else (result,))
                   if isinstance(t, torch.Tensor) and t.requires_grad]
        if outputs:
            loss = sum(o.float().sum() for o in outputs)
            torch.autograd.grad(loss, grad_leaves, allow_unused=True)
    return time.perf_counter() - start


def autotune(run_ours, run_torch, grad_leaves=(), repeats: int = 5) -> dict:
    """Times both engines on one call, interleaved after one warm-up each; the random
    state is restored so the measured runs draw nothing the caller would see."""
    with torch.random.fork_rng(devices=[]):
        times = {"rnnkernels": [], "torch": []}
        runs = {"rnnkernels": run_ours, "torch": run_torch}
        for name, run in runs.items():
            _time_once(run, grad_leaves)
        for _ in range(repeats):
            for name, run in runs.items():
                times[name].append(_time_once(run, grad_leaves))
    ours, theirs = (statistics.median(times[n]) for n in ("rnnkernels", "torch"))
    engine = "torch" if theirs < ours else "rnnkernels"
    return {"engine": engine, "rnnkernels_s": ours, "torch_s": theirs,
            "reason": f"rnnkernels {ours * 1e3:.3f} ms, torch {theirs * 1e3:.3f} ms"}


cpu = CpuBackend()
