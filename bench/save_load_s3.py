"""Save/load on S3 (a moto server): cloudckpt against torch.save/safetensors over s3fs, DCP
``FsspecWriter`` and s3torchconnector, interleaved.

Same measurement as ``save_load_local`` (``bench/lib/saveload.py``), against a moto server
this script starts on a free 127.0.0.1 port (``cloudckpt.testing.emulators``) and stops
afterwards. Methods: cloudckpt (both compressions), ``torch.save`` streamed into an s3fs
file, ``safetensors.torch.save`` bytes written with ``fs.pipe``, DCP ``FsspecWriter``
(``sync_files=False``: with s3fs, ``True`` makes DCP call ``os.sync()`` for the whole
machine), s3torchconnector ``S3Checkpoint`` (reported as not installed where it is not).

Usage (from the repository root)::

    .venv/bin/python -m bench.save_load_s3 --size-mib 256 --dtype fp32 --repeats 3 \\
        --out bench/results/s3-256m-fp32.json
    .venv/bin/python -m bench.save_load_s3 --quick
"""

from __future__ import annotations

import sys

from bench.lib import saveload


def main(argv: list[str] | None = None) -> int:
    return saveload.main("s3", "s3", __doc__, argv, defaults={"size_mib": 256, "repeats": 3},
                         quick={"size_mib": 8, "repeats": 1})


if __name__ == "__main__":
    sys.exit(main())
