"""Run every benchmark: each ``tests/bench/bench_*.py`` module's ``main()``, in name order.

``python -m tests.bench`` (what ``make bench`` runs). A benchmark that fails is reported and
the others still run; the exit status is non-zero if any failed.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path


def main() -> int:
    names = sorted(path.stem for path in Path(__file__).parent.glob("bench_*.py"))
    failed: list[str] = []
    for name in names:
        print(f"==> {name}", flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"{__package__ or 'tests.bench'}.{name}")
            module.main()
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"<== {name} ({time.perf_counter() - started:.1f} s)\n", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
