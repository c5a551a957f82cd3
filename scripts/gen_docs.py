#!/usr/bin/env python
"""Regenerates docs/configuration.md (from the config dataclasses) and docs/metrics.md (from the
metrics glossary in scripts/reference_docs.py).

    .venv/bin/python scripts/gen_docs.py          # write both files
    .venv/bin/python scripts/gen_docs.py --check  # exit 1 if a committed file is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "scripts"))
from reference_docs import render_configuration_reference, render_metrics_glossary  # noqa: E402

DOCS = {
    "docs/configuration.md": render_configuration_reference,
    "docs/metrics.md": render_metrics_glossary,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = parser.parse_args(argv)
    stale = []
    for rel, render in DOCS.items():
        path = ROOT / rel
        text = render()
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {rel}")
    if stale:
        print(f"stale: {stale}; run .venv/bin/python scripts/gen_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
