"""torch's own plans at the fractions a search asks for (its ``SearchInputs.reference``), built once each, and
built ahead on a second thread while the search's first solves run.

A fraction's search needs torch's plan at that fraction before it verifies any plan of its own (the plan
must not run above it), and below ``tuning.MONOTONE_ANCHOR`` torch's plan at the anchor too. Building one
(torch's knapsack and min-cut, an extraction, a simulation) is pure Python; the search's first solves are
CBC in a subprocess, during which the planning thread only waits. So the references are built on a worker
thread from the start of the search, and the search's waits on CBC pay for them.

What may run at once: the worker reads the joint graph and makes new graphs from it, and torch's runtime
estimate runs fake-tensor ops; the planning thread, meanwhile, only solves (PuLP, CBC, the chain accounts:
no torch). Anything else the planning thread does with torch (building and simulating a plan, ``verify``,
or a reference not asked for ahead) first waits for the worker to finish (``settle``), so no two threads
ever touch the graph, its fake values or torch's partitioner together.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import torch

T = TypeVar("T")


class References(Generic[T]):
    """``build(fraction)``, once per fraction; ``ahead`` starts building some on a worker thread."""

    def __init__(self, build: Callable[[float], T], *, on_wait: Callable[[], object] | None = None) -> None:
        self._build = build
        self._done: dict[float, T] = {}
        self._ready: dict[float, threading.Event] = {}
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None
        self._on_wait = on_wait  # a context manager factory timing the planning thread's waits

    def ahead(self, fractions: Sequence[float]) -> bool:
        """Start building ``fractions`` (in that order) on a worker thread; False (nothing started) where this
        thread has a torch mode on that the worker could not share (anything but the compile's own fake mode,
        which the worker enters too, so its plans are the ones this thread would build): they are built when
        asked for instead."""
        if self._worker is not None or not fractions:
            return False
        modes = _shareable_modes()
        if modes is None:
            return False
        todo = [f for f in dict.fromkeys(fractions) if f not in self._done]
        self._ready.update((f, threading.Event()) for f in todo)
        grad = torch.is_grad_enabled()

        def work() -> None:
            try:
                with torch.set_grad_enabled(grad), contextlib.ExitStack() as stack:
                    for mode in modes:
                        stack.enter_context(mode)
                    for f in todo:
                        self._done[f] = self._build(f)
                        self._ready[f].set()
            except BaseException as exc:  # handed to the planning thread at its next wait
                self._error = exc
            finally:
                for event in self._ready.values():
                    event.set()

        self._worker = threading.Thread(target=work, name="memcompile-torch-reference", daemon=True)
        self._worker.start()
        return True

    def settle(self) -> None:
        """Wait until the worker (if any) has finished; raises what it raised."""
        worker = self._worker
        if worker is not None and worker.is_alive():
            with self._waiting():
                worker.join()
        self._raise()

    def __call__(self, fraction: float) -> T:
        event = self._ready.get(fraction)
        if event is not None and not event.is_set():
            with self._waiting():
                event.wait()
        self._raise()
        if fraction not in self._done:
            self.settle()  # never two builds at once
            self._done[fraction] = self._build(fraction)
        return self._done[fraction]

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _waiting(self):
        return self._on_wait() if self._on_wait is not None else contextlib.nullcontext()


def _shareable_modes() -> list | None:
    """This thread's dispatch modes, innermost last, where they are all fake-tensor modes and no function mode is on
    (the modes a compile partitions under); else None. Its fake mode is entered on the worker while this thread
    only solves (module docstring), so the two never run fake ops at once."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    length = getattr(torch._C, "_len_torch_function_stack", None)
    if length is None or length():
        return None
    modes = _get_current_dispatch_mode_stack()
    return modes if all(isinstance(m, FakeTensorMode) for m in modes) else None
