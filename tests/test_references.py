"""memcompile._references: torch's plans built once per fraction, ahead on a worker thread while the search solves,
and never two builds (or a build and the planning thread's own torch work) at once."""

import threading

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack

from memcompile._references import References


class Builds:
    """A build that records which thread built what, how many ran at once, and the worker's torch state."""

    def __init__(self, gate: threading.Event | None = None, fail: float | None = None):
        self.calls: list[tuple[float, str]] = []
        self.running = 0
        self.most = 0
        self.gate = gate
        self.fail = fail
        self.seen: dict[float, tuple] = {}
        self.lock = threading.Lock()

    def __call__(self, fraction: float):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if self.gate is not None:
                assert self.gate.wait(10)
            if fraction == self.fail:
                raise KeyboardInterrupt("build stopped")  # not an Exception: the builder's own guard lets it pass
            self.calls.append((fraction, threading.current_thread().name))
            self.seen[fraction] = (torch.is_grad_enabled(), list(_get_current_dispatch_mode_stack()))
            return f"plan at {fraction}"
        finally:
            with self.lock:
                self.running -= 1


def test_built_once_on_the_worker_and_handed_out_in_any_order():
    build = Builds()
    refs = References(build)
    assert refs.ahead([0.3, 0.5])
    assert refs(0.5) == "plan at 0.5"
    assert refs(0.3) == "plan at 0.3"
    assert refs(0.3) == "plan at 0.3"
    refs.settle()
    assert sorted(f for f, _ in build.calls) == [0.3, 0.5]
    assert all(name == "memcompile-torch-reference" for _, name in build.calls)
    assert not refs.ahead([0.1])  # one worker per search: later fractions are built when asked for


def test_a_fraction_not_asked_ahead_waits_for_the_worker_and_is_built_here():
    gate = threading.Event()
    build = Builds(gate)
    refs = References(build)
    refs.ahead([0.5])
    threading.Timer(0.2, gate.set).start()
    assert refs(0.1) == "plan at 0.1"
    assert build.most == 1  # never two builds at once
    assert build.calls == [(0.5, "memcompile-torch-reference"), (0.1, threading.current_thread().name)]


def test_settle_waits_for_the_worker_and_times_the_wait():
    gate = threading.Event()
    build = Builds(gate)
    waits = []

    class Timed:
        def __enter__(self):
            waits.append("waited")

        def __exit__(self, *exc):
            return False

    refs = References(build, on_wait=Timed)
    refs.ahead([0.5, 0.3])
    threading.Timer(0.2, gate.set).start()
    refs.settle()
    assert [f for f, _ in build.calls] == [0.5, 0.3]
    assert waits == ["waited"]
    refs.settle()  # nothing left to wait for
    assert waits == ["waited"]


def test_what_the_worker_raises_is_raised_on_the_planning_thread():
    build = Builds(fail=0.5)
    refs = References(build)
    refs.ahead([0.5, 0.3])
    with pytest.raises(KeyboardInterrupt, match="build stopped"):
        refs(0.5)
    # raised once; a fraction the worker never reached is built when asked for
    assert refs(0.3) == "plan at 0.3"


def test_the_worker_gets_the_grad_mode_and_the_fake_mode_it_was_started_under():
    build = Builds()
    refs = References(build)
    fake = FakeTensorMode()
    with torch.no_grad(), fake:
        assert refs.ahead([0.5])
        refs.settle()
    grad, modes = build.seen[0.5]
    assert grad is False and modes == [fake]
    assert _get_current_dispatch_mode_stack() == []


def test_not_ahead_under_a_mode_the_worker_cannot_share():
    class Counting(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    build = Builds()
    refs = References(build)
    with Counting():
        assert not refs.ahead([0.5])
        assert refs(0.5) == "plan at 0.5"
    assert build.calls == [(0.5, threading.current_thread().name)]
