"""Example scripts imported by path, for the tests of examples/ (the repository root is never put on sys.path)."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_example(name: str):
    """examples/<name> as a module (registered in sys.modules: dataclasses in it need their module)."""
    path = ROOT / "examples" / name
    spec = importlib.util.spec_from_file_location(f"_example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
