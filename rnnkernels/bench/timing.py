"""Interleaved timing of compared variants.

Method (docs/shared STYLE and ANCHORS): every variant is warmed up right before the timed
loop (the first multi-threaded call after an idle spell costs 1 to 8 ms on the 2-core
machines), then the variants alternate inside the repetition loop, the order reversed
every other repetition, so drift and neighbours' load hit all of them alike. A timed
block runs a variant ``number`` times back to back, ``number`` chosen in the warm-up so
that a block lasts at least ``min_block_s``; a sample is the block's time / number.
Reported: median and interquartile range of the samples. CPU blocks are timed with
time.perf_counter (the garbage collector off); CUDA blocks with CUDA events after a
synchronize, waiting for the end event.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Timing:
    samples: list[float] = field(default_factory=list)  # seconds per call, one per block
    number: int = 1  # calls per block

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iqr(self) -> float:
        return iqr(self.samples)

    def to_dict(self) -> dict:
        return {"median_s": self.median, "iqr_s": self.iqr, "samples_s": list(self.samples),
                "number": self.number, "repeats": len(self.samples)}


def iqr(samples: list[float]) -> float:
    if len(samples) < 2:
        return 0.0
    q = statistics.quantiles(samples, n=4, method="inclusive")
    return q[2] - q[0]


class Clock:
    """perf_counter on CPU; CUDA events (after a synchronize) on CUDA."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def block(self, fn: Callable[[], object], number: int) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(number):
                fn()
            stop.record()
            stop.synchronize()
            return start.elapsed_time(stop) / 1e3
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        return time.perf_counter() - t0


def time_interleaved(variants: dict[str, Callable[[], object]], repeats: int, device: str = "cpu",
                     min_block_s: float = 0.02, warmup_s: float = 0.1, min_warmup_calls: int = 2,
                     max_number: int = 1000) -> dict[str, Timing]:
    """Times each callable ``repeats`` times, interleaved; returns a Timing per name."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    clock = Clock(device)
    names = list(variants)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        # Warm-up, interleaved too: at least min_warmup_calls calls of each and warmup_s in all.
        per_call = {name: math.inf for name in names}
        calls = 0
        warm_start = time.perf_counter()
        while calls < min_warmup_calls or time.perf_counter() - warm_start < warmup_s:
            for name in names:
                per_call[name] = min(per_call[name], clock.block(variants[name], 1))
            calls += 1
        timings = {}
        for name in names:
            number = 1 if per_call[name] <= 0 else math.ceil(min_block_s / per_call[name])
            timings[name] = Timing(number=max(1, min(max_number, number)))
        for rep in range(repeats):
            order = names if rep % 2 == 0 else names[::-1]
            for name in order:
                t = timings[name]
                t.samples.append(clock.block(variants[name], t.number) / t.number)
    finally:
        if gc_was_enabled:
            gc.enable()
    return timings
