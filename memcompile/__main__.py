"""``python -m memcompile ...``: the same as the ``memcompile`` console script."""

from .cli import main

raise SystemExit(main())
