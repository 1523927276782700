"""Helpers shared by the benchmark scenarios, one purpose per module:

- ``cli``: the common options (``--quick``, ``--workdir``, ``--out``) and the scratch directory
- ``worker``: one measurement in a fresh interpreter (peak RSS per operation)
- ``memory``: resident-set-size readings
- ``stats``: medians, maxima, ratios, slopes over repeats
- ``stores``: a local scratch directory or a bucket on a moto S3 server started for the run
- ``state``: the deterministic "model + Adam moments" flat state, digests, page touching
- ``model``: the ``nn.Module`` and fake training step of the async scenarios
- ``peers``: how cloudckpt, torch.save, safetensors, DCP and s3torchconnector save and load
- ``saveload``: the interleaved save/load matrix of the ``save_load_*`` scenarios
- ``report``: markdown tables, progress lines, the machine description and the JSON file
"""

from __future__ import annotations

from pathlib import Path

MiB = 1 << 20
#: the repository root (benchmarks run from here: ``python -m bench.<scenario>``)
REPO = Path(__file__).resolve().parents[2]
#: the bucket S3 scenarios create on their moto server
BUCKET = "cloudckpt-bench"
