"""Peak memory of cloudckpt alone on a large local state (default 4 GiB fp32), single run.

The ``save_load_local`` measurement (``bench/lib/saveload.py``) restricted to ``cloudckpt``
by default (``--methods`` adds peers), sized for the peak RSS above the state rather than for
times: memory in flight should be bounded by cloudckpt's budget, not by the checkpoint size.

Usage (from the repository root)::

    .venv/bin/python -m bench.save_load_rss --size-mib 4096 --out bench/results/rss-local-4096.json
    .venv/bin/python -m bench.save_load_rss --quick
"""

from __future__ import annotations

import sys

from bench.lib import saveload


def main(argv: list[str] | None = None) -> int:
    return saveload.main("rss4g", "local", __doc__, argv,
                         defaults={"size_mib": 4096, "repeats": 1},
                         quick={"size_mib": 64, "repeats": 1}, default_methods=["cloudckpt"])


if __name__ == "__main__":
    sys.exit(main())
