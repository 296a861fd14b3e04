"""``python -m bench`` (``make bench``): every benchmark module present, one after the other.

Ingestion (``bench.ingest``), the delivery HTTP client (``bench.delivery_client``), then the
end-to-end pipeline (``bench.e2e``, which writes ``bench/results.md``), then Redis memory
(``bench.memory``, its own section of ``bench/results.md``). A module that is missing
is skipped; one that fails is reported, the others still run, and the exit code is 1.
"""

from __future__ import annotations

import importlib
import sys
import traceback

MODULES = ("bench.ingest", "bench.delivery_client", "bench.e2e", "bench.memory")


def main() -> int:
    failed = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            print(f"== {name}: not in this build, skipped", flush=True)
            continue
        print(f"\n== {name}", flush=True)
        try:
            code = module.main([])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            if exc.code not in (0, None) and not isinstance(exc.code, int):
                print(exc.code, flush=True)
        except Exception:
            traceback.print_exc()
            code = 1
        if code:
            print(f"== {name}: failed (exit code {code})", flush=True)
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
