"""Nothing may depend on the repository root being importable: there, the folder ``kernels/`` shadows
the PyPI package ``kernels`` that transformers imports (a fresh install failed that way)."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _resolved(entry: str) -> Path:
    return Path(os.path.abspath(entry or os.getcwd())).resolve()  # '' means the working directory


def test_repository_root_is_not_on_sys_path():
    on_path = [entry for entry in sys.path if _resolved(entry) == ROOT]
    assert not on_path, (
        f"the repository root {ROOT} is on sys.path ({on_path!r}): run the suite with `pytest`, not "
        "`python -m pytest` (which puts the working directory first), and never insert the root from a "
        "conftest or a test; the root's kernels/ folder shadows the PyPI package `kernels`"
    )


def test_top_level_kernels_folder_is_not_importable_as_kernels():
    spec = importlib.util.find_spec("kernels")
    if spec is None:
        pytest.skip("no package named `kernels` is installed (transformers installs it)")
    origin = Path(spec.origin or next(iter(spec.submodule_search_locations))).resolve()
    assert ROOT / "kernels" not in (origin, *origin.parents), f"`import kernels` finds {origin}, the repository's folder"


def test_project_kernels_install_under_the_package_name():
    import memcompile.kernels

    assert Path(memcompile.kernels.__file__).resolve().parent == ROOT / "kernels"


def test_presets_come_from_the_package():
    from memcompile import models

    assert Path(models.__file__).resolve().parent == ROOT / "memcompile"
    model, inputs = models.make("gpt-tiny")
    assert model(*inputs).ndim == 0
