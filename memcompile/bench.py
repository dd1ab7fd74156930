"""Side-by-side measurements: memcompile against eager, Inductor, torch's budget, checkpointing, offload.

    python -m memcompile.bench --model gpt-small --budgets 1.0,0.5,0.0 --json out.json --plot out.png

Every method and budget runs in its own Python process, so allocator state, Dynamo's
code cache and Inductor's caches never leak from one run into the next; the child
prints one JSON line and the parent turns the lines into a Markdown table, a JSON file
and a plot. A child that fails or runs past ``--timeout`` becomes a row with its error.

Per run: the measured peak bytes of one training step (forward, backward, zero_grad;
CUDA allocator stats, or the CPU profiler method of ``memcompile.measure``), counting
what is live before the step (parameters, batch); the median step time over ``--steps``
steps after the first step and ``--warmup`` more; and the compile time, taken as the
first step's time minus that median. Children run with Inductor's caches disabled, so
every plan (torch's budget partition and memcompile's) is made afresh.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

METHODS = (
    "eager",
    "inductor",
    "torch-budget",
    "checkpoint",
    "checkpoint-compiled",
    "save-on-cpu",
    "memcompile",
    "memcompile-lossy",
)
"""Every method the bench knows, in table order."""

DEFAULT_METHODS = tuple(m for m in METHODS if m != "memcompile-lossy")
"""What ``--methods all`` runs; ``--lossy`` adds memcompile-lossy."""

BUDGETED_METHODS = ("torch-budget", "memcompile", "memcompile-lossy")
"""Methods run once per budget; the others run once."""

LOSSY_MODES = ("keep", "recompute", "quantize", "fewbit")

DTYPES = ("float32", "bfloat16")
DEVICES = ("cpu", "cuda")
BLOCK_LIST_NAMES = ("blocks", "layers", "h", "layer", "decoder_layers")
"""Attribute names of a transformer's block list, preferred in this order."""

@dataclass(frozen=True, slots=True, kw_only=True)
class RunSpec:
    """One child process: a method at a budget (None for methods without one)."""

    method: str
    budget: float | None
    model: str
    device: str
    dtype: str
    steps: int
    warmup: int
    threads: int | None = None
    """``torch.set_num_threads`` for the child (before anything compiles); None keeps torch's default."""

    @property
    def label(self) -> str:
        return self.method if self.budget is None else f"{self.method}@{self.budget:g}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """One row of the table (also one element of the JSON ``rows``)."""

    method: str
    budget: float | None
    status: str
    """"ok", "error", "timeout" or "not available"."""
    peak_bytes: int | None = None
    """Measured peak of one step, counting ``live_before_bytes``."""
    live_before_bytes: int | None = None
    """Bytes live when the step started: parameters, buffers, the batch."""
    step_seconds: float | None = None
    """Median of the timed steps (forward, backward, zero_grad)."""
    step_min_seconds: float | None = None
    """Fastest timed step: on a shared machine, the least disturbed by other processes."""
    first_step_seconds: float | None = None
    compile_seconds: float | None = None
    """First step minus the median step: Dynamo, partitioning/planning, Inductor codegen."""
    plan_seconds: float | None = None
    """memcompile only: planning time the partitioner recorded, summed over graphs."""
    predicted_peak_bytes: int | None = None
    """memcompile only: the planner's simulated peak (largest over graphs)."""
    loss: float | None = None
    """Loss of the first step (the same for every lossless method, up to float reordering)."""
    note: str = ""
    error: str = ""
    wall_seconds: float | None = None
    """Wall time of the child process, start to finish."""
    source: str = ""
    """git revision of the memcompile source this child imported (see ``meta["source"]``)."""


# ----------------------------------------------------------------------------- child


def build_model(model: str, *, device: str, dtype: str):
    """``(model, inputs)`` from a preset name or ``FILE.py:FACTORY`` (``memcompile._factory``), on
    ``device``, floating parameters and inputs cast to ``dtype``."""
    import torch

    from ._factory import build

    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    module, inputs = build(model)
    module = module.to(device=device, dtype=torch_dtype)  # casts floating parameters only
    inputs = tuple(
        (t.to(device=device, dtype=torch_dtype) if t.is_floating_point() else t.to(device))
        if isinstance(t, torch.Tensor)
        else t
        for t in inputs
    )
    return module, inputs


def find_blocks(model) -> tuple[str, Any]:
    """(name, ModuleList) of the model's transformer blocks, for per-block checkpointing.

    A ModuleList named like ``blocks``/``layers``/``h`` wins; otherwise the ModuleList
    holding the most parameters.
    """
    import torch.nn as nn

    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    lists = [(name, m) for name, m in lists if any(True for _ in m.parameters())]
    if not lists:
        raise ValueError(
            f"checkpoint: found no nn.ModuleList of blocks in {type(model).__name__}; "
            f"expected an attribute such as model.blocks or model.layers"
        )
    for preferred in BLOCK_LIST_NAMES:
        for name, m in lists:
            if name.rsplit(".", 1)[-1] == preferred:
                return name, m
    return max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def checkpoint_blocks(model) -> str:
    """Wrap every block's forward in ``torch.utils.checkpoint`` (non-reentrant); returns the list's name."""
    from torch.utils.checkpoint import checkpoint

    name, blocks = find_blocks(model)

    def wrap(forward: Callable) -> Callable:
        def checkpointed(*args, **kwargs):
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)

        return checkpointed

    for block in blocks:
        block.forward = wrap(block.forward)
    return name


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def run_child(spec: RunSpec) -> RunResult:
    """Build, compile, time and measure one method in this process."""
    import torch

    from .backend import clear_plans, last_plans
    from .config import MemConfig
    from .measure import live_bytes_of, measure_peak

    if spec.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch.cuda.is_available() is False in this process")
    note = ""
    options = None
    if spec.method in ("memcompile", "memcompile-lossy"):
        options = {"memory_budget": spec.budget}
        if spec.method == "memcompile-lossy":
            options["modes"] = LOSSY_MODES
        try:
            MemConfig.from_options(options)
        except ValueError as exc:
            return RunResult(method=spec.method, budget=spec.budget, status="not available", error=str(exc))

    if spec.threads is not None:
        torch.set_num_threads(spec.threads)  # before compiling: Inductor's C++ kernels read it at codegen
    torch.manual_seed(0)
    model, inputs = build_model(spec.model, device=spec.device, dtype=spec.dtype)
    model.train()
    context: contextlib.AbstractContextManager = contextlib.nullcontext()
    if spec.method == "eager":
        fn = model
    elif spec.method == "inductor":
        fn = torch.compile(model)
    elif spec.method == "torch-budget":
        # Held for the whole run: the partition happens at the first call, and the backward may compile lazily.
        context = torch._functorch.config.patch(activation_memory_budget=spec.budget)
        fn = torch.compile(model)
    elif spec.method in ("checkpoint", "checkpoint-compiled"):
        note = f"checkpoint per block of model.{checkpoint_blocks(model)}"
        fn = model if spec.method == "checkpoint" else torch.compile(model)
    elif spec.method == "save-on-cpu":
        pin = spec.device == "cuda"
        if spec.device == "cpu":
            note = "tensors are already on the host: save_on_cpu only copies them, no saving expected"

        def fn(*args, _model=model, _pin=pin):
            with torch.autograd.graph.save_on_cpu(pin_memory=_pin):
                return _model(*args)
    elif spec.method in ("memcompile", "memcompile-lossy"):
        clear_plans()
        # the callable rather than the name "memcompile": the name needs the installed entry point,
        # which a checkout on PYTHONPATH (a GPU machine without network) does not have
        from memcompile.backend import memcompile_backend

        fn = torch.compile(model, backend=memcompile_backend, options=options)
    else:
        raise ValueError(f"method: unknown {spec.method!r}; accepted: {METHODS}")

    def step():
        loss = fn(*inputs)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss

    with context, torch._inductor.config.patch(force_disable_caches=True):
        model.zero_grad(set_to_none=True)
        _sync(spec.device)
        start = time.perf_counter()
        loss = float(step().detach())
        _sync(spec.device)
        first_seconds = time.perf_counter() - start
        for _ in range(spec.warmup):
            step()
        times = []
        for _ in range(spec.steps):
            _sync(spec.device)
            start = time.perf_counter()
            step()
            _sync(spec.device)
            times.append(time.perf_counter() - start)
        # The profiler slows the step it watches, so the peak is measured on a step of its own.
        peak = measure_peak(step, live_before_bytes=live_bytes_of(model, inputs), device=spec.device)

    step_seconds = statistics.median(times) if times else None
    plan_seconds = predicted = None
    if spec.method.startswith("memcompile"):
        plans = last_plans()
        if plans:
            plan_seconds = sum(p.planning_seconds for p in plans)
            predicted = max(p.predicted_peak_bytes for p in plans)
            sources = sorted({p.source for p in plans})
            note = f"{len(plans)} graph(s), plan source {'/'.join(sources)}"
            notes = [n for p in plans for n in p.notes]
            if notes:
                note += "; " + notes[0][:200]
        else:
            note = "no plan recorded (the partitioner did not run)"
    return RunResult(
        method=spec.method,
        budget=spec.budget,
        status="ok",
        peak_bytes=peak.peak_bytes,
        live_before_bytes=peak.live_before_bytes,
        step_seconds=step_seconds,
        step_min_seconds=min(times) if times else None,
        first_step_seconds=first_seconds,
        compile_seconds=max(0.0, first_seconds - step_seconds) if step_seconds is not None else None,
        plan_seconds=plan_seconds,
        predicted_peak_bytes=predicted,
        loss=loss,
        note=note,
    )


def _error_text(exc: BaseException) -> str:
    inner = getattr(exc, "inner_exception", None)  # Dynamo's BackendCompilerFailed wraps the backend's error
    if inner is not None:
        exc = inner
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _child_main(spec_json: str) -> int:
    spec = RunSpec(**json.loads(spec_json))
    start = time.perf_counter()
    try:
        result = run_child(spec)
        rc = 0
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row, the parent keeps going
        import traceback

        traceback.print_exc(file=sys.stderr)
        result = RunResult(method=spec.method, budget=spec.budget, status="error", error=_error_text(exc))
        rc = 1
    result = _replace(result, wall_seconds=time.perf_counter() - start, source=_source_revision())
    print(json.dumps(asdict(result)), flush=True)
    return rc


def _replace(result: RunResult, **changes) -> RunResult:
    import dataclasses

    return dataclasses.replace(result, **changes)


# ----------------------------------------------------------------------------- parent


def _parse_result(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict) and "method" in data and "status" in data:
                return data
    return None


def _last_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line.strip()[:500]
    return lines[-1].strip()[:500] if lines else ""


def _end(proc: subprocess.Popen) -> None:
    """Kill the child and its session (which holds Inductor's compile workers too), then reap it."""
    if os.name == "posix":
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.kill()
    proc.communicate()


def spawn(spec: RunSpec, *, timeout_seconds: float) -> RunResult:
    """Run ``spec`` in a fresh interpreter; a crash or time-out becomes a row with its error text."""
    env = dict(os.environ, TORCHINDUCTOR_FORCE_DISABLE_CACHES="1")
    cmd = [sys.executable, "-m", "memcompile.bench", "--child", json.dumps(asdict(spec))]
    start = time.perf_counter()
    # The child starts in a neutral folder: `python -m` puts its working directory on sys.path, and
    # a source checkout there shadows installed packages (its kernels/ hides PyPI's `kernels`).
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=os.name == "posix",
        cwd=tempfile.gettempdir(),
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        _end(proc)
        return RunResult(
            method=spec.method,
            budget=spec.budget,
            status="timeout",
            error=f"timed out after {timeout_seconds:g} s (--timeout)",
            wall_seconds=time.perf_counter() - start,
        )
    except BaseException:  # Ctrl-C: the child runs in its own session and would not see it
        _end(proc)
        raise
    wall = time.perf_counter() - start
    data = _parse_result(stdout)
    if data is None:
        return RunResult(
            method=spec.method,
            budget=spec.budget,
            status="error",
            error=f"child exited with code {proc.returncode} and no result: {_last_error_line(stderr)}",
            wall_seconds=wall,
        )
    data["wall_seconds"] = wall
    known = set(RunResult.__dataclass_fields__)
    return RunResult(**{k: v for k, v in data.items() if k in known})


def _fmt_mb(nbytes: int | None) -> str:
    return "—" if nbytes is None else f"{nbytes / 1e6:.2f}"


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * scale:.{digits}f}"


def markdown_table(rows: Sequence[RunResult]) -> str:
    """One line per run; "× inductor" is the peak over Inductor's default partition's peak."""
    reference = next((r.peak_bytes for r in rows if r.method == "inductor" and r.peak_bytes), None)
    header = ("method", "budget", "peak MB", "× inductor", "step ms", "min ms", "compile s", "plan s", "predicted MB", "note")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for r in rows:
        ratio = f"{r.peak_bytes / reference:.3f}" if reference and r.peak_bytes else "—"
        note = r.note if r.status == "ok" else f"**{r.status}**: {r.error}"
        note = note.replace("|", "\\|").replace("\n", " ")
        cells = (
            r.method,
            "—" if r.budget is None else f"{r.budget:g}",
            _fmt_mb(r.peak_bytes),
            ratio,
            _fmt(r.step_seconds, 1e3),
            _fmt(r.step_min_seconds, 1e3),
            _fmt(r.compile_seconds),
            _fmt(r.plan_seconds, digits=2),
            _fmt_mb(r.predicted_peak_bytes),
            note,
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[RunResult], path: str, *, title: str) -> None:
    """Peak memory against step time, one labelled point per method and budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    colours = plt.get_cmap("tab10")
    for i, method in enumerate(METHODS):
        points = [r for r in rows if r.method == method and r.status == "ok" and r.step_seconds and r.peak_bytes]
        if not points:
            continue
        xs = [r.step_seconds * 1e3 for r in points]
        ys = [r.peak_bytes / 1e6 for r in points]
        ax.scatter(xs, ys, color=colours(i), label=method, zorder=3)
        if method in BUDGETED_METHODS and len(points) > 1:
            ax.plot(xs, ys, color=colours(i), alpha=0.35, zorder=2)
        for r, x, y in zip(points, xs, ys):
            text = method if r.budget is None else f"{r.budget:g}"
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, color=colours(i))
    times = [r.step_seconds for r in rows if r.status == "ok" and r.step_seconds]
    if times and max(times) > 20 * min(times):
        ax.set_xscale("log")
    ax.set_xlabel("median step time (ms): forward + backward + zero_grad; labels are budgets")
    ax.set_ylabel("measured peak (MB), parameters and batch included")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _device_text(device: str) -> str:
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            return f"CUDA, {torch.cuda.get_device_name()}"
        return "CUDA (not available)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU, {cores} cores ({platform.processor() or platform.machine()})"


def _source_revision() -> str:
    """The git commit of the memcompile source tree, "+ local changes" when it differs; "" outside git."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "passes").is_dir():
        return ""  # an installed copy, not the source tree: an enclosing repository says nothing about it
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "memcompile", "passes", "kernels"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{head} + local changes" if dirty else head


def _parse_budgets(text: str) -> tuple[float, ...]:
    budgets = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a number; expected fractions like 1.0,0.5,0.0") from None
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(f"{value:g} is outside [0, 1]; budgets are fractions")
        budgets.append(value)
    if not budgets:
        raise argparse.ArgumentTypeError("expected at least one fraction, such as 1.0,0.5,0.0")
    return tuple(dict.fromkeys(budgets))


def _parse_methods(text: str) -> tuple[str, ...]:
    if text.strip() == "all":
        return DEFAULT_METHODS
    names = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {unknown or text!r}; accepted: all, or a subset of {', '.join(METHODS)}")
    return names


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memcompile bench",
        description="Measure peak memory and step time of memcompile beside eager, Inductor, torch's "
        "activation_memory_budget, per-block checkpointing and save_on_cpu, one process per run.",
    )
    parser.add_argument("spec", nargs="?", metavar="FILE.py:FACTORY",
                        help="the model to measure: FACTORY() returns (model, example_inputs) and model(*example_inputs) "
                        "is the loss, as for memcompile inspect; or a preset name (see --model)")
    parser.add_argument("--model", default=None,
                        help="a preset of memcompile.models (gpt-tiny, gpt-small, llama-small, ...) or FILE.py:FACTORY "
                        "(default gpt-small)")
    parser.add_argument("--budgets", type=_parse_budgets, default=(1.0, 0.5, 0.0),
                        help="comma-separated fractions in [0, 1] for torch-budget and memcompile (default 1.0,0.5,0.0)")
    parser.add_argument("--methods", type=_parse_methods, default=DEFAULT_METHODS,
                        help=f"'all' (default) or a comma-separated subset of: {', '.join(METHODS)}")
    parser.add_argument("--lossy", action="store_true",
                        help=f"also run memcompile with modes {LOSSY_MODES} (reported 'not available' if a mode is refused)")
    parser.add_argument("--steps", type=_positive_int, default=5, help="timed steps per run (default 5)")
    parser.add_argument("--warmup", type=_non_negative_int, default=1,
                        help="untimed steps after the first (compiling) step (default 1)")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch.set_num_threads in each child (default: torch's choice); "
                        "on a CPU shared with other work, 1 gives steadier timings")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child process (default 900)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON ('-' for stdout)")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of peak memory against step time (needs matplotlib)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def model_of(args: argparse.Namespace) -> str:
    """The model the command line names: the positional FILE.py:FACTORY, else --model, else gpt-small."""
    return args.spec or args.model or "gpt-small"


def plan_runs(args: argparse.Namespace) -> list[RunSpec]:
    methods = list(args.methods)
    if args.lossy and "memcompile-lossy" not in methods:
        methods.append("memcompile-lossy")
    model = model_of(args)
    path, sep, factory = model.rpartition(":")
    if sep and path.endswith(".py"):
        model = f"{os.path.abspath(path)}:{factory}"  # the child may run elsewhere
    common = dict(model=model, device=args.device, dtype=args.dtype, steps=args.steps, warmup=args.warmup,
                  threads=args.threads)
    runs = []
    for method in sorted(methods, key=METHODS.index):
        budgets = args.budgets if method in BUDGETED_METHODS else (None,)
        runs.extend(RunSpec(method=method, budget=b, **common) for b in budgets)
    return runs


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchReport:
    meta: dict[str, Any]
    rows: tuple[RunResult, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "rows": [asdict(r) for r in self.rows]}


def _refused_modes(spec: RunSpec) -> str | None:
    """Why MemConfig refuses the lossy modes (so no process is started for them), or None."""
    if spec.method != "memcompile-lossy":
        return None
    from .config import MemConfig

    try:
        MemConfig.from_options({"memory_budget": spec.budget, "modes": LOSSY_MODES})
    except ValueError as exc:
        return str(exc)
    return None


def _check_model(model: str) -> str | None:
    """A one-line usage error when the model cannot be built (no such file or preset, a factory that
    breaks the contract), else None: said once, before any child process starts."""
    from ._factory import FactoryError, build

    try:
        build(model)
    except FactoryError as exc:
        return str(exc)
    return None


def _progress(total: int):
    if not sys.stderr.isatty():
        return None  # a log file gets the plain lines only
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, file=sys.stderr, unit="run", leave=False)


def run_bench(args: argparse.Namespace, argv: Sequence[str]) -> BenchReport:
    import torch

    from . import __version__

    runs = plan_runs(args)
    meta = {
        "date": datetime.date.today().isoformat(),
        "device": _device_text(args.device),
        "torch": torch.__version__,
        "memcompile": __version__,
        "source": _source_revision(),
        "python": platform.python_version(),
        "model": model_of(args),
        "dtype": args.dtype,
        "budgets": list(args.budgets),
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "command": shlex.join(["python", "-m", "memcompile.bench", *argv]),
    }
    rows: list[RunResult] = []
    bar = _progress(len(runs))
    start = time.perf_counter()
    for i, spec in enumerate(runs, 1):
        refusal = _refused_modes(spec)
        if refusal is not None:
            result = RunResult(method=spec.method, budget=spec.budget, status="not available", error=refusal)
        else:
            result = spawn(spec, timeout_seconds=args.timeout)
        rows.append(result)
        if result.status == "ok":
            what = f"peak {_fmt_mb(result.peak_bytes)} MB, step {_fmt(result.step_seconds, 1e3)} ms"
        else:
            what = f"{result.status}: {result.error[:160]}"
        line = (f"[{i}/{len(runs)}] {spec.label}: {what} "
                f"({_fmt(result.wall_seconds)} s; {time.perf_counter() - start:.0f} s elapsed)")
        if bar is not None:
            bar.write(line, file=sys.stderr)
            bar.update(1)
        else:
            print(line, file=sys.stderr, flush=True)
    if bar is not None:
        bar.close()
    return BenchReport(meta=meta, rows=tuple(rows))


def format_report(report: BenchReport) -> str:
    m = report.meta
    head = (
        f"model {m['model']} ({m['dtype']}), {m['device']}, torch {m['torch']}, "
        f"memcompile {m['memcompile']}{' (' + m['source'] + ')' if m['source'] else ''}, {m['date']}\n"
        f"{m['steps']} timed steps after 1 + {m['warmup']} warm-up; peak of one more step; "
        f"{m['threads'] or 'default'} thread(s) per run\n"
        f"command: {m['command']}\n"
    )
    changed = sorted({r.source for r in report.rows if r.source and r.source != m["source"]})
    if changed:
        head += f"note: the memcompile source changed while this ran; children saw {', '.join(changed)}\n"
    return head + "\n" + markdown_table(report.rows)


def main(argv: Sequence[str] | None = None) -> int:
    """``memcompile bench ...`` / ``python -m memcompile.bench ...``; 0 when every run gave a row."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on a bad command line (0 for --help)
        return int(exc.code or 0)
    if args.child is not None:
        return _child_main(args.child)
    if args.spec is not None and args.model is not None and args.spec != args.model:
        print(f"memcompile bench: two models given ({args.spec!r} and --model {args.model!r}); pass one", file=sys.stderr)
        return 2
    args.model = model_of(args)
    problem = _check_model(args.model)
    if problem is not None:
        print(f"memcompile bench: {problem}", file=sys.stderr)
        return 2
    report = run_bench(args, argv)
    # With --json - the JSON owns stdout; the table goes to stderr.
    print(format_report(report), file=sys.stderr if args.json == "-" else sys.stdout, flush=True)
    if args.json:
        text = json.dumps(report.to_dict(), indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.plot:
        try:
            plot(report.rows, args.plot, title=f"{args.model} ({args.dtype}), {report.meta['device']}, torch {report.meta['torch']}")
        except ImportError:
            print("memcompile bench: --plot needs matplotlib (pip install matplotlib); no plot written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
