#!/usr/bin/env python
"""Runs an algorithm comparison and writes its report: the same as ``sspo-jax compare``.

    .venv/bin/python scripts/compare_algorithms.py configs/compare/equal_eps.yaml --jobs 2
    .venv/bin/python scripts/compare_algorithms.py configs/compare/equal_eps.yaml --steps-override 2 --seeds 0
    .venv/bin/python scripts/compare_algorithms.py configs/compare/equal_eps.yaml --report-only

See ``sspo-jax compare --help`` for every option.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sspo_jax.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
