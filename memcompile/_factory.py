"""The user's model as a command line names it: ``FILE.py:FACTORY`` or a preset name.

One contract for ``memcompile inspect``, ``check`` and ``bench``: ``FACTORY()`` returns
``(model, example_inputs)``, ``model`` an ``nn.Module`` and ``model(*example_inputs)`` the loss.
Presets come from the package (``memcompile.models``, and ``memcompile.zoo`` where present), so
they work from any install.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

__all__ = ["FactoryError", "is_file_spec", "preset_names", "load_factory", "build"]


class FactoryError(ValueError):
    """A bad ``FILE.py:FACTORY`` or preset name, or a factory that breaks the contract: one line for the user."""


def is_file_spec(spec: str) -> bool:
    path, sep, name = spec.rpartition(":")
    return bool(sep and path.endswith(".py"))


def _preset_modules() -> list[Any]:
    from . import models

    modules = [models]
    try:
        modules.append(importlib.import_module("memcompile.zoo"))
    except ModuleNotFoundError as exc:  # the zoo is optional; a broken zoo must still say so
        if exc.name != "memcompile.zoo":
            raise
    return modules


def preset_names() -> tuple[str, ...]:
    names: list[str] = []
    for module in _preset_modules():
        names.extend(getattr(module, "PRESETS", None) or getattr(module, "NAMES", ()))
    return tuple(dict.fromkeys(names))


def load_factory(spec: str):
    """The callable ``FACTORY`` of ``FILE.py:FACTORY``, imported the way ``python FILE.py`` would see its neighbours."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise FactoryError(f"expected FILE.py:FACTORY, got {spec!r}")
    if not os.path.isfile(path):
        raise FactoryError(f"no such file: {path}")
    # Only the file's own folder, as `python FILE.py` does: not the working directory, which may be a
    # source tree whose folders shadow installed packages (a checkout's kernels/ shadows PyPI's `kernels`).
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module_spec = importlib.util.spec_from_file_location("_memcompile_user_module", path)
    if module_spec is None or module_spec.loader is None:
        raise FactoryError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses in the user's file look their module up
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file: one line, no traceback
        raise FactoryError(f"importing {path} failed: {type(exc).__name__}: {one_line(exc)}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise FactoryError(f"{path} has no callable {name!r}")
    return factory


def _preset_factory(name: str):
    for module in _preset_modules():
        if name in (getattr(module, "PRESETS", None) or getattr(module, "NAMES", ())):
            return lambda: module.make(name)
    raise FactoryError(f"unknown model preset {name!r}; presets: {', '.join(preset_names())}, or FILE.py:FACTORY")


def build(spec: str) -> tuple[Any, tuple[Any, ...]]:
    """Call the factory named by ``spec`` (``FILE.py:FACTORY`` or a preset) and check what it returned."""
    import torch

    names_a_file = ":" in spec or spec.endswith(".py")
    factory = load_factory(spec) if names_a_file else _preset_factory(spec)
    try:
        built = factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory: one line, no traceback
        raise FactoryError(f"{spec} raised {type(exc).__name__}: {one_line(exc)}") from None
    if not (isinstance(built, (tuple, list)) and len(built) == 2):
        raise FactoryError(f"{spec} must return (model, example_inputs); it returned {describe(built)}")
    model, example_inputs = built
    if not isinstance(model, torch.nn.Module):
        raise FactoryError(f"{spec} must return (model, example_inputs) with model a torch.nn.Module; got {describe(model)}")
    if not isinstance(example_inputs, (tuple, list)):
        raise FactoryError(
            f"{spec} must return (model, example_inputs) with example_inputs a tuple or list; got {describe(example_inputs)}"
        )
    return model, tuple(example_inputs)


def describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:600] + " ..." if len(text) > 600 else text
