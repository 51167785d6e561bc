"""Command line of the benchmark: python -m rnnkernels.bench [run|plot|compare|presets] ...

    python -m rnnkernels.bench --preset quick                     # the README's main job
    python -m rnnkernels.bench --cells lstm gru -T 100 -B 1 32 -H 256 512 --modes training
    python -m rnnkernels.bench --cells lstm_cell -B 1 16 -H 256 --dtype float32 autocast_bfloat16
    python -m rnnkernels.bench plot results.jsonl
    python -m rnnkernels.bench compare old.jsonl new.jsonl
    python -m rnnkernels.bench presets

`run` is the default command: arguments that do not start with a command name are its.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from .cases import CELLS, DEVICES, DTYPES, LAYER_CELLS, MODES, PRESETS, Case, custom_cases, preset_cases

COMMANDS = ("run", "plot", "compare", "table", "presets")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rnnkernels.bench",
        description="Times rnnkernels against torch.nn (interleaved, same run, same state_dict) "
                    "and reports time per pass and per step, GFLOP/s, GB/s, fractions of the "
                    "machine's ceilings, the GEMM lower bound and memory. Other commands: plot, "
                    "compare, presets (python -m rnnkernels.bench COMMAND -h).")
    grid = p.add_argument_group("cases: a preset, or a grid (the Cartesian product of the lists)")
    grid.add_argument("--preset", choices=sorted(PRESETS), help="a named grid (see `presets`)")
    grid.add_argument("--cells", nargs="+", choices=CELLS,
                      help="default: lstm gru rnn (layers over a sequence); lstm_cell gru_cell "
                           "rnn_cell: one call of torch.nn.LSTMCell/GRUCell/RNNCell on x [B, I] with "
                           "a given state, so T is 1 for them")
    grid.add_argument("-T", "--T", nargs="+", type=_positive_int,
                      help="sequence lengths (layers only: the *_cell cases run one step, T = 1, "
                           "whatever -T says; not needed when only *_cell cells are chosen)")
    grid.add_argument("-B", "--B", nargs="+", type=_positive_int, help="batch sizes")
    grid.add_argument("-I", "--I", nargs="+", type=_positive_int, help="input sizes (default: = H)")
    grid.add_argument("-H", "--H", nargs="+", type=_positive_int, help="hidden sizes")
    grid.add_argument("--layers", nargs="+", type=_positive_int, help="default: 1")
    grid.add_argument("--direction", choices=("uni", "bi", "both"), help="default: uni")
    grid.add_argument("--proj", nargs="+", type=_nonnegative_int, help="LSTM proj_size (0: none)")
    grid.add_argument("--packed", action="store_true",
                      help="PackedSequence input, lengths uniform in [T/2, T]")
    grid.add_argument("--modes", nargs="+", choices=MODES, help="default: inference training")
    grid.add_argument("--dtype", nargs="+", choices=DTYPES, dest="dtypes",
                      help="float32 float64 bfloat16 float16: modules and input converted; "
                           "autocast_bfloat16 autocast_float16: float32 modules and input, the "
                           "forward under torch.autocast, the backward outside it. Default: "
                           "float32 (GPU presets: float32 bfloat16 float16)")
    grid.add_argument("--device", choices=DEVICES, help="default: cpu (GPU presets: cuda)")
    grid.add_argument("--threads", type=_positive_int, default=2,
                      help="torch.set_num_threads for the whole run, LB included (default 2)")
    grid.add_argument("--engine", choices=("auto", "rnnkernels", "torch"), default="auto",
                      help="rnnkernels.backends.cpu.engine for our modules (default auto: what a "
                           "user gets; rnnkernels: our kernels wherever they run, as the engine "
                           "table's measurements need)")
    timing = p.add_argument_group("timing")
    timing.add_argument("--repeats", type=_positive_int,
                        help="timed blocks per variant (default 11; the quick preset 9)")
    timing.add_argument("--min-block-ms", type=float, default=20.0,
                        help="a timed block repeats the pass until it lasts this long (default 20)")
    timing.add_argument("--warmup-ms", type=float, default=100.0,
                        help="warm-up right before each case's timed loop (default 100)")
    timing.add_argument("--seed", type=int, default=0)
    extra = p.add_argument_group("what else to measure")
    extra.add_argument("--no-lb", action="store_true", help="skip the GEMM lower bound")
    extra.add_argument("--lb-backend", choices=("auto", "blas", "torch", "python"), default="auto",
                       help="CPU lower bound: MKL through dlsym (blas), at::mm_out (torch), a Python "
                            "torch.mm loop (python); auto: blas when found (default)")
    extra.add_argument("--memory", action="store_true",
                       help="CPU: peak resident memory per case and variant, in a worker process "
                            "(CUDA peaks are always measured)")
    extra.add_argument("--peers", nargs="+", choices=("onnxruntime", "openvino"), default=(),
                       help="also time our module exported to ONNX (dynamo=False: native RNN "
                            "ops) in these runtimes, CPU float32 inference of layers; OpenVINO "
                            "also with its bf16 hint where the CPU has bf16")
    extra.add_argument("--no-ceilings", action="store_true", help="skip the matmul/copy ceilings")
    extra.add_argument("--remeasure-ceilings", action="store_true",
                       help="measure the ceilings again instead of using the cache (a cached "
                            "ceiling measured under load or on another CPU is never reused)")
    out = p.add_argument_group("output")
    out.add_argument("--out", help="JSON-lines file (default: rnnkernels-bench-<preset|grid>-<time>.jsonl "
                                   "in the current directory); records are appended as cases finish")
    out.add_argument("--csv", help="CSV file (default: the --out path with .csv)")
    out.add_argument("--no-save", action="store_true", help="print only, write no files")
    out.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    out.add_argument("--no-legend", action="store_true", help="no column legend after the table")
    out.add_argument("--dry-run", action="store_true",
                     help="list the cases with their GEMM FLOPs and bytes, time nothing")
    return p


def plot_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rnnkernels.bench plot",
                                description="PNG speedup heatmap over B x H and time against T "
                                            "from a results file (.jsonl or .csv); needs matplotlib.")
    p.add_argument("results")
    p.add_argument("--out-dir", help="default: next to the results file")
    p.add_argument("--metric", choices=("speedup", "ours_over_lb", "nn_over_lb"), default="speedup",
                   help="heatmap value (default speedup = nn/ours)")
    return p


def table_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rnnkernels.bench table",
                                description="Prints a Markdown table (ratio, GFLOP/s, lower "
                                            "bound) of a results file.")
    p.add_argument("results", help="a .jsonl file written by a run")
    return p


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rnnkernels.bench compare",
                                description="Per-case ratios between two results files; flags "
                                            "regressions beyond the noise estimated from the runs.")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--metric", choices=("auto", "time", "speedup"), default="auto",
                   help="time: our time (same machine); speedup: our time relative to torch.nn in "
                        "the same run (machines differ); auto picks by the machines (default)")
    p.add_argument("--z", type=float, default=3.0, help="flag beyond z sigma of noise (default 3)")
    p.add_argument("--min-change", type=float, default=0.03,
                   help="never flag changes smaller than this fraction (default 0.03)")
    p.add_argument("--fail-on-regression", action="store_true", help="exit with 1 when any case regressed")
    return p


def cases_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[Case]:
    geometry_given = any(getattr(args, n) is not None for n in ("T", "B", "I", "H", "layers", "direction", "proj"))
    if args.preset and geometry_given:
        parser.error("give either --preset or a grid (-T/-B/-I/-H/--layers/--direction/--proj), not both; "
                     "--cells, --modes, --dtype and --device narrow or replace a preset's")
    if args.preset:
        if args.packed:
            parser.error("--packed applies to a grid; the packed presets are cpu-packed and gpu-packed")
        return preset_cases(args.preset, args.threads, args.cells, args.modes, args.dtypes, args.device)
    cells = args.cells or ("lstm", "gru", "rnn")
    needs_t = any(cell in LAYER_CELLS for cell in cells)
    if (args.T is None and needs_t) or args.B is None or args.H is None:
        parser.error("choose cases: --preset NAME, or a grid with at least -T, -B and -H "
                     "(-B and -H for *_cell cells only; e.g. --preset quick, or -T 100 -B 32 -H 256)")
    bidirectional = {"uni": (False,), "bi": (True,), "both": (False, True), None: (False,)}[args.direction]
    try:
        return custom_cases(
            T=args.T or [1], B=args.B, I=args.I or [None], H=args.H, layers=args.layers or [1],
            bidirectional=bidirectional, proj=args.proj or [0], cells=cells,
            modes=args.modes or MODES, dtypes=args.dtypes or ("float32",), device=args.device or "cpu",
            threads=args.threads, packed=args.packed)
    except ValueError as err:
        parser.error(str(err))


def _default_out(args) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(f"rnnkernels-bench-{args.preset or 'grid'}-{stamp}.jsonl")


def _dry_run(cases: list[Case]) -> int:
    from . import model

    print(f"{len(cases)} cases")
    print(f"{'key':<80} {'GEMM GFLOP':>10} {'MB':>9} {'products':>8}")
    for case in cases:
        print(f"{case.key:<80} {model.gemm_flops(case) / 1e9:>10.4g} "
              f"{model.traffic_bytes(case) / 2**20:>9.4g} {len(model.gemm_sequence(case)):>8}")
    return 0


def run_main(argv: list[str]) -> int:
    from ..backends import cpu as cpu_backend

    parser = run_parser()
    engine = parser.parse_known_args(argv)[0].engine
    # The engine setting for this run only: an in-process caller (a test, a notebook)
    # gets its own setting back.
    with cpu_backend.flags(engine=engine):
        return _run_main(parser, argv)


def _run_main(parser, argv: list[str]) -> int:
    args = parser.parse_args(argv)
    cases = cases_from_args(args, parser)
    if not cases:
        parser.error("the chosen options give no case (--proj applies to lstm only; a preset's "
                     "layer grids take layer cells and its *Cell grids *_cell cells; *_cell cells "
                     "take one dense unidirectional layer)")
    if args.dry_run:
        return _dry_run(cases)

    import torch

    if any(c.device == "cuda" for c in cases) and not torch.cuda.is_available():
        parser.error("--device cuda (or a gpu-* preset) but torch.cuda.is_available() is False")

    from . import env as env_mod
    from . import output, runner
    from .memory import RssWorker
    from .progress import Progress

    preset_repeats = PRESETS[args.preset].repeats if args.preset else None
    options = runner.RunOptions(
        repeats=args.repeats or preset_repeats or 11, min_block_s=args.min_block_ms / 1e3,
        warmup_s=args.warmup_ms / 1e3, lower_bound=not args.no_lb, lb_backend=args.lb_backend,
        memory=args.memory, ceilings=not args.no_ceilings, remeasure_ceilings=args.remeasure_ceilings,
        seed=args.seed, peers=tuple(args.peers))
    torch.set_num_threads(args.threads)

    jsonl_path = csv_path = None
    if not args.no_save:
        jsonl_path = Path(args.out) if args.out else _default_out(args)
        csv_path = Path(args.csv) if args.csv else jsonl_path.with_suffix(".csv")
        jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        jsonl_path.write_text("")  # records are appended as cases finish

    progress = Progress(len(cases), enabled=not args.no_progress)
    progress.show("measuring ceilings" if options.ceilings else "")
    all_ceilings = runner.ceilings_for(cases, options)
    env = env_mod.environment(args.threads)
    progress.clear()
    for ceilings in all_ceilings.values():
        for record in ceilings.values():
            if record.get("note"):
                print(f"ceilings ({record['device']}, {record['threads']} threads): {record['note']}",
                      file=sys.stderr)
    busy = env.get("loadavg_1min")
    if busy is not None and env_mod.is_loaded(busy, env.get("logical_cpus")):
        print(f"warning: load average {busy:.1f} on {env.get('logical_cpus')} CPUs: other processes are "
              "running, so these timings (2-thread ones most) will be slow and noisy", file=sys.stderr)
    lb_seen = False
    records, failed = [], []
    interrupted = False
    needs_worker = options.memory and any(c.device == "cpu" for c in cases)
    worker = RssWorker() if needs_worker else None
    try:
        for ceilings in all_ceilings.values() or [None]:
            print(output.machine_line(env, ceilings))
        print(output.header(), flush=True)
        for case in cases:
            progress.show(case.label())
            try:
                record = runner.run_case(case, options, env, all_ceilings.get((case.device, case.threads)),
                                         worker)
            except (RuntimeError, ValueError, MemoryError) as err:  # one bad case does not end a sweep
                progress.advance()
                progress.clear()
                failed.append(case.key)
                print(f"{case.label()}: FAILED: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
                continue
            if record.get("lb") and not lb_seen:  # the LB's backend joins the environment
                lb_seen = True
                env["lower_bound_backend"] = record["lb"]["backend"]
                env["blas_version"] = record["lb"].get("blas_version")
            record["loadavg_1min"] = env_mod.load_average()
            records.append(record)
            progress.advance()
            progress.clear()
            print(output.row(record), flush=True)
            if jsonl_path:
                output.append_jsonl(record, jsonl_path)
    except KeyboardInterrupt:
        interrupted = True
        print(f"\ninterrupted after {len(records)} of {len(cases)} cases", file=sys.stderr)
    finally:
        progress.finish()
        if worker is not None:
            worker.close()
    for line in output.summary(records):
        print(line)
    if not args.no_legend:
        print(output.LEGEND)
    if jsonl_path:
        output.write_jsonl(records, jsonl_path)  # again, now every record has the final env
        output.write_csv(records, csv_path)
        print(f"wrote {jsonl_path} and {csv_path}")
    if failed:
        print(f"{len(failed)} of {len(cases)} cases failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 130 if interrupted else 0


def presets_main(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="python -m rnnkernels.bench presets",
                            description="Lists the named grids.").parse_args(argv)
    for name, preset in PRESETS.items():
        count = len(preset_cases(name))
        repeats = f", {preset.repeats} repeats" if preset.repeats else ""
        print(f"{name:<12} {count:>4} cases{repeats}  {preset.description}; device {preset.device}")
        for grid in preset.grids:
            for t, b, i, h, layers, bi in grid.geometries:
                extra = (f", {layers} layers" if layers > 1 else "") + (", bidirectional" if bi else "")
                shape = f"(B, I, H) = ({b}, {i}, {h})" if grid.step_cells else f"(T, B, I, H) = ({t}, {b}, {i}, {h})"
                print(f"{'':<19}{shape}{extra}")
            print(f"{'':<21}cells {' '.join(grid.cells)}; modes {' '.join(grid.modes)}; "
                  f"dtypes {' '.join(grid.dtypes)}" + ("; packed input" if True in grid.packed else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else "run"
    rest = argv[1:] if argv and argv[0] in COMMANDS else argv
    if command == "plot":
        args = plot_parser().parse_args(rest)
        from . import plot

        return 0 if plot.main(args.results, args.out_dir, args.metric) else 1
    if command == "compare":
        args = compare_parser().parse_args(rest)
        from . import compare

        return compare.main(args.old, args.new, args.metric, args.z, args.min_change,
                            args.fail_on_regression)
    if command == "table":
        args = table_parser().parse_args(rest)
        from . import table

        return table.main(args.results)
    if command == "presets":
        return presets_main(rest)
    return run_main(rest)
