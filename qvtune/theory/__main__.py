"""Entry point for ``python -m qvtune.theory``."""

from qvtune.theory.cli import main

raise SystemExit(main())
