"""Save/load on local disk: cloudckpt against torch.save, safetensors and DCP, interleaved.

For each method, the wall time of one save and one load of the same deterministic "model +
Adam moments" state (``bench/lib/state.py``), the peak resident memory above the state during
each (a fresh process per operation), and the bytes the checkpoint occupies. All writes are
durable (every file flushed and fsynced, and its directory): cloudckpt (default compression),
cloudckpt ``compression="none"``, ``torch.save`` to a file, ``safetensors.torch.save_file``,
``torch.distributed.checkpoint`` with ``FileSystemWriter(sync_files=True, thread_count=2)``.
How it is measured and summarised: ``bench/lib/saveload.py``.

Usage (from the repository root)::

    .venv/bin/python -m bench.save_load_local --size-mib 1024 --dtype fp32 --repeats 3 \\
        --out bench/results/local-1g-fp32.json
    .venv/bin/python -m bench.save_load_local --size-mib 1024 --dtype bf16 --repeats 3 \\
        --out bench/results/local-1g-bf16.json
    .venv/bin/python -m bench.save_load_local --methods cloudckpt,dcp --repeats 5
    .venv/bin/python -m bench.save_load_local --quick
"""

from __future__ import annotations

import sys

from bench.lib import saveload


def main(argv: list[str] | None = None) -> int:
    return saveload.main("local", "local", __doc__, argv, defaults={"size_mib": 1024, "repeats": 3},
                         quick={"size_mib": 16, "repeats": 1})


if __name__ == "__main__":
    sys.exit(main())
