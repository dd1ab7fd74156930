"""The toy presets, re-exported from ``memcompile.models`` for command lines such as
``memcompile inspect examples/toy_transformer.py:gpt_small`` (the presets live in the package)."""

from memcompile.models import *  # noqa: F401,F403
from memcompile.models import __all__  # noqa: F401
