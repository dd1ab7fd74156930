"""``memcompile`` command line: ``inspect`` a plan, ``check`` its gradients, ``bench`` methods side by side.

Exit codes: 0 success; 1 the command ran and found a problem (gradients differ, a byte budget
no plan meets, the model failed inside the compile); 2 a bad command line, file, factory or
option (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

_FACTORY_HELP = (
    "FILE.py:FACTORY, where FACTORY() returns (model, example_inputs) and model(*example_inputs) "
    "returns the loss, e.g. examples/toy_transformer.py:gpt_tiny"
)
_BUDGET_HELP = (
    "a fraction in [0, 1] (0: smallest reachable peak, 1: Inductor's default partition; the scale of "
    "torch's activation_memory_budget) or a byte cap on the step's peak such as 6GiB, 800MB, 1e9; "
    "default: no budget (analysis of the default partition)"
)
_MODES_HELP = "modes the planner may use, space- or comma-separated (default: keep recompute inplace; opt-in: quantize fewbit offload)"


class _UsageError(Exception):
    """A bad command line, user file or option: printed as one line, exit code 2."""


class _Failure(Exception):
    """The command ran into a problem that is not a usage error: one line, exit code 1."""


# ---------------------------------------------------------------------- argument helpers
def _build(spec: str):
    """(model, example_inputs) of ``FILE.py:FACTORY`` or a preset; a broken spec or factory is a usage error."""
    from ._factory import FactoryError, build

    try:
        return build(spec)
    except FactoryError as exc:
        raise _UsageError(str(exc)) from None


def _budget(text: str | None) -> float | int | None:
    """'0.5' -> 0.5 (fraction), '1e9' / '800000000' / '6GiB' -> bytes: config.parse_budget, the
    parser memory_budget uses too, so a budget means the same on the command line and in the API."""
    from .config import parse_budget

    if text is None:
        return None
    try:
        fraction, nbytes = parse_budget(text, option="--budget")
    except (TypeError, ValueError) as exc:
        raise _UsageError(_one_line(exc)) from None
    return fraction if fraction is not None else nbytes


def _modes(values: Sequence[str] | None) -> tuple[str, ...] | None:
    if not values:
        return None
    modes = tuple(m.strip() for v in values for m in v.split(",") if m.strip())
    if not modes:
        raise _UsageError("--modes: expected at least one mode name, such as keep recompute")
    return modes


def _options(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """Backend options from the command line, validated by MemConfig (bad ones are usage errors)."""
    from .config import MemConfig

    options: dict[str, Any] = {"memory_budget": _budget(args.budget), **extra}
    modes = _modes(args.modes)
    if modes is not None:
        options["modes"] = modes
    if getattr(args, "time_limit", None) is not None:
        options["solver_time_limit"] = args.time_limit
    try:
        MemConfig.from_options(options)
    except (TypeError, ValueError) as exc:
        raise _UsageError(_one_line(exc)) from None
    return options


def _compile_error(exc: BaseException, spec: str) -> Exception:
    """The error to report for an exception raised while compiling or running the user's model."""
    from ._errors import MemoryBudgetError

    inner = getattr(exc, "inner_exception", None) or exc
    if isinstance(inner, MemoryBudgetError):
        return _Failure(_one_line(inner))
    return _Failure(f"compiling or running {spec} failed: {type(inner).__name__}: {_one_line(inner)}")


# ---------------------------------------------------------------------- inspect
def inspect_command(args: argparse.Namespace) -> int:
    from .report import inspect

    options = _options(args)
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            _check_writable(flag, path)
    if args.plot:
        _require_matplotlib()
    model, example_inputs = _build(args.target)
    budget = options.pop("memory_budget")
    try:
        report = inspect(model, example_inputs, memory_budget=budget, **options)
    except Exception as exc:  # noqa: BLE001 - reported as one line; see the exit codes
        raise _compile_error(exc, args.target) from None
    print(report.summary(all_tensors=args.all))
    if args.graph:
        for number, plan in enumerate(report.plans):
            print(f"\n# graph {number}: forward\n{plan.forward_code.strip()}")
            print(f"\n# graph {number}: backward\n{plan.backward_code.strip()}")
    try:
        if args.json:
            print(f"wrote {report.write_json(args.json)}")
        if args.plot:
            print(f"wrote {report.plot(args.plot)}")
    except OSError as exc:
        raise _UsageError(f"cannot write {exc.filename or 'the output'}: {exc.strerror or exc}") from None
    return 0


# ---------------------------------------------------------------------- check
def check_command(args: argparse.Namespace) -> int:
    import copy

    import torch

    from .backend import _collect_plans
    from .measure import live_bytes_of, measure_peak
    from .report import _fmt_bytes, plans_not_cached

    if args.tol < 0 or not math.isfinite(args.tol):
        raise _UsageError(f"--tol: expected a non-negative number, got {args.tol!r}")
    options = _options(args, inner=args.inner)
    from .config import MemConfig

    config = MemConfig.from_options(options)
    model, example_inputs = _build(args.target)
    reference = copy.deepcopy(model)

    torch.manual_seed(args.seed)  # the same random draws (dropout masks) in both runs
    try:
        ref_loss = _loss(reference(*_fresh(example_inputs)), args.target)
        ref_loss.backward()
    except _UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's model: one line
        raise _Failure(f"the eager step of {args.target} failed: {type(exc).__name__}: {_one_line(exc)}") from None

    compiled = torch.compile(model, backend="memcompile", options=options)
    torch.manual_seed(args.seed)
    with _collect_plans() as plans, plans_not_cached(config):
        try:
            loss = _loss(compiled(*_fresh(example_inputs)), args.target)
            loss.backward()
        except _UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported as one line
            raise _compile_error(exc, args.target) from None

    ref_params = dict(reference.named_parameters())
    rows = []
    for name, param in model.named_parameters():
        ref = ref_params[name]
        if ref.grad is None and param.grad is None:
            continue
        if ref.grad is None or param.grad is None:
            rows.append((name, math.inf, math.inf, False))
            continue
        diff = (param.grad.double() - ref.grad.double()).abs()
        allowed = args.tol * (1 + ref.grad.double().abs())
        worst_rel = float((diff / (1 + ref.grad.double().abs())).max()) if diff.numel() else 0.0
        rows.append((name, float(diff.max()) if diff.numel() else 0.0, worst_rel, bool((diff <= allowed).all())))
    # state the forward updates in place (BatchNorm's running statistics, counters, averages)
    ref_buffers = dict(reference.named_buffers())
    for name, buffer in model.named_buffers():
        ref = ref_buffers.get(name)
        if ref is None or ref.shape != buffer.shape:
            continue
        diff = (buffer.double() - ref.double()).abs()
        allowed = args.tol * (1 + ref.double().abs()) if ref.is_floating_point() else 0.0
        worst_rel = float((diff / (1 + ref.double().abs())).max()) if diff.numel() else 0.0
        rows.append((f"{name} (buffer)", float(diff.max()) if diff.numel() else 0.0, worst_rel,
                     bool((diff <= allowed).all())))
    loss_diff = abs(float(loss.detach()) - float(ref_loss.detach()))
    loss_ok = loss_diff <= args.tol * (1 + abs(float(ref_loss.detach())))

    name_w = max([len("parameter"), *(len(r[0]) for r in rows)])
    print(f"gradients, {args.target} through memcompile (inner={args.inner}) vs eager; "
          f"ok when |diff| <= tol * (1 + |eager|), tol={args.tol:g}")
    print(f"  {'parameter':<{name_w}}  {'max |diff|':>11}  {'max scaled':>11}")
    for name, worst, worst_rel, ok in rows:
        print(f"  {name:<{name_w}}  {worst:>11.3e}  {worst_rel:>11.3e}  {'ok' if ok else 'DIFFERS'}")
    print(f"  {'loss':<{name_w}}  {loss_diff:>11.3e}  {'':>11}  {'ok' if loss_ok else 'DIFFERS'}")

    for p in model.parameters():
        p.grad = None
    device = next((t.device for t in example_inputs if isinstance(t, torch.Tensor)), torch.device("cpu"))
    measured_inputs = _fresh(example_inputs)
    measured = measure_peak(
        lambda: _loss(compiled(*measured_inputs), args.target).backward(),
        live_before_bytes=live_bytes_of(model, example_inputs),
        device=device,
    )
    if plans:
        predicted = max(p.predicted_peak_bytes for p in plans)
        baseline = max(p.baseline_peak_bytes for p in plans)
        ratio = measured.peak_bytes / predicted - 1 if predicted else 0.0
        graphs = f" (largest of {len(plans)} graphs)" if len(plans) > 1 else ""
        print(f"peak: measured {_fmt_bytes(measured.peak_bytes)}, predicted {_fmt_bytes(predicted)}{graphs} "
              f"({ratio:+.1%}), default partition predicted {_fmt_bytes(baseline)}")
        if args.inner == "eager":
            print("  (the prediction models Inductor's fused buffers; inner=eager materialises every value)")
    else:
        print(f"peak: measured {_fmt_bytes(measured.peak_bytes)}; no plan was recorded to compare with")

    failed = [r[0] for r in rows if not r[3]] + ([] if loss_ok else ["loss"])
    if failed:
        print(f"FAIL: {len(failed)} of {len(rows) + 1} differ beyond tol={args.tol:g}: {', '.join(failed[:5])}"
              + (" ..." if len(failed) > 5 else ""))
        return 1
    n_buffers = sum(r[0].endswith(" (buffer)") for r in rows)
    buffers = f", {n_buffers} buffers" if n_buffers else ""
    print(f"OK: {len(rows) - n_buffers} gradients{buffers} and the loss match eager within tol={args.tol:g}")
    return 0


def _fresh(example_inputs: tuple) -> tuple:
    """A copy of the example inputs for one run: a model that mutates its inputs in place must not
    change what the next run reads (the eager reference would otherwise feed the compiled run)."""
    import torch
    from torch.utils._pytree import tree_map

    def copy(value):
        if not isinstance(value, torch.Tensor):
            return value
        return value.detach().clone().requires_grad_(value.requires_grad)

    return tuple(tree_map(copy, value) for value in example_inputs)


def _loss(output: Any, spec: str):
    import torch

    if not isinstance(output, torch.Tensor):
        raise _UsageError(f"check needs model(*example_inputs) from {spec} to return the loss tensor; got {_describe(output)}")
    return output if output.dim() == 0 else output.sum()


# ---------------------------------------------------------------------- bench
def bench_command(args: argparse.Namespace) -> int:
    try:
        bench = importlib.import_module("memcompile.bench")
    except ImportError as exc:
        raise _UsageError(f"bench is not available in this install ({_one_line(exc)})") from None
    return int(bench.main(list(args.bench_args)) or 0)


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memcompile",
        description="Plan the activation memory of a torch.compile training step: which tensors the forward "
        "keeps for the backward and which it recomputes, under a memory budget.",
        epilog="Exit codes: 0 ok; 1 a check failed, a byte budget cannot be met or the model failed to compile; "
        "2 bad arguments, file, factory, budget or mode. "
        "Run 'memcompile COMMAND --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "inspect",
        help="plan a model's training step and print what is kept and recomputed",
        description="Plan a model's training step without running one (the forward runs once, its output is "
        "discarded) and print one row per tensor the backward reads from the forward (mode keep or recompute), "
        "the default-partition and predicted peaks, the solver status and the binding step: where the predicted "
        "peak occurs and which tensors are live there.",
    )
    p.add_argument("target", metavar="FILE.py:FACTORY", help=_FACTORY_HELP)
    p.add_argument("--budget", help=_BUDGET_HELP)
    p.add_argument("--modes", nargs="+", metavar="MODE", help=_MODES_HELP)
    p.add_argument("--time-limit", type=float, metavar="SECONDS", help="CBC's time limit per solve (default 20)")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON (keys: see README, 'Inspecting a plan')")
    p.add_argument("--plot", metavar="PATH", help="write the memory timeline, default partition vs plan, as a PNG")
    p.add_argument("--graph", action="store_true", help="also print the rewritten forward and backward code")
    p.add_argument("--all", action="store_true", help="list views (0 bytes of their own) in the table too")
    p.set_defaults(func=inspect_command)

    c = sub.add_parser(
        "check",
        help="run one training step eagerly and one through memcompile; compare gradients and peaks",
        description="Run one forward+backward of a deep copy of the model eagerly and one through "
        "torch.compile(backend='memcompile'), print the largest gradient difference per parameter and the "
        "measured vs predicted peak, and exit 1 when a gradient or the loss differs by more than "
        "tol * (1 + |eager value|).",
    )
    c.add_argument("target", metavar="FILE.py:FACTORY", help=_FACTORY_HELP)
    c.add_argument("--budget", help=_BUDGET_HELP)
    c.add_argument("--modes", nargs="+", metavar="MODE", help=_MODES_HELP)
    c.add_argument("--inner", choices=("eager", "inductor"), default="eager",
                   help="what compiles the rewritten graphs (default eager: fast; inductor: what training uses)")
    c.add_argument("--tol", type=float, default=1e-5, help="tolerance on each gradient element (default 1e-5)")
    c.add_argument("--seed", type=int, default=0, help="RNG seed set before each of the two steps (default 0)")
    c.add_argument("--time-limit", type=float, metavar="SECONDS", help="CBC's time limit per solve (default 20)")
    c.set_defaults(func=check_command)

    b = sub.add_parser(
        "bench",
        help="measure memcompile against eager, Inductor, torch's budget and checkpointing (memcompile bench --help)",
        description="Forwards every argument to memcompile.bench; run 'memcompile bench --help' for its options.",
        add_help=False,
    )
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of memcompile.bench")
    b.set_defaults(func=bench_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["bench"]:  # everything after 'bench' is bench's, '--help' included
        args = argparse.Namespace(command="bench", bench_args=argv[1:], func=bench_command)
    else:
        args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _UsageError as exc:
        print(f"memcompile {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except _Failure as exc:
        print(f"memcompile: {exc}", file=sys.stderr)
        return 1


def _check_writable(flag: str, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise _UsageError(f"{flag}: {path} is a directory; give a file path")
    if not os.path.isdir(directory):
        raise _UsageError(f"{flag}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise _UsageError(f"{flag}: directory {directory} is not writable")


def _require_matplotlib() -> None:
    from .report import _matplotlib_figure

    try:
        _matplotlib_figure()
    except ImportError as exc:
        raise _UsageError(str(exc)) from None


from ._factory import describe as _describe, one_line as _one_line  # noqa: E402 - shared with bench


if __name__ == "__main__":
    raise SystemExit(main())
