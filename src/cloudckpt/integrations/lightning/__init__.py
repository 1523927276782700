"""PyTorch Lightning integration (the ``lightning`` package, ``>=2.6,<3``).

Usage::

    from lightning.pytorch import Trainer
    from cloudckpt.integrations.lightning import (CloudckptIO, CloudckptModelCheckpoint,
                                                  find_checkpoint, load_from_checkpoint)

    ckpt = CloudckptModelCheckpoint(dirpath="s3://bucket/run", monitor="val_loss", save_last=True)
    trainer = Trainer(plugins=[CloudckptIO(storage_options=opts)], callbacks=[ckpt])
    trainer.fit(model, ckpt_path="last")        # resumes from s3://bucket/run/last.ckpt if any
    best = load_from_checkpoint(MyModule, find_checkpoint("s3://bucket/run", "best",
                                                           storage_options=opts),
                                storage_options=opts)

* :class:`CloudckptIO` (:mod:`.io`): the ``CheckpointIO`` plugin; every checkpoint "file" is a
  cloudckpt checkpoint (manifest + data, committed atomically, never pickled), with a summary
  (step, epoch, monitored scores) that ``cloudckpt ls`` shows.
* :class:`CloudckptModelCheckpoint` (:mod:`._private`): a ``ModelCheckpoint`` with which
  ``ckpt_path="last"`` finds the newest ``last*.ckpt`` on object stores too (Lightning's own
  lookup drops the URI scheme and starts from scratch).
* :func:`find_checkpoint` (``"last"``/``"best"``) and :func:`load_from_checkpoint`
  (:mod:`.resume`): ``LightningModule.load_from_checkpoint`` reads files with ``torch.load``
  and fails on a cloudckpt checkpoint; this one builds the module the same way from ours.
* :data:`TYPES`, :func:`encode_checkpoint`, :func:`decode_checkpoint` (:mod:`.encoding`): how
  the checkpoint dict's values (hyperparameters included) are stored faithfully.

ModelCheckpoint and fsspec. ``ModelCheckpoint`` also touches ``dirpath`` itself through an
fsspec filesystem it builds *without* storage options (``get_filesystem(dirpath)``): to warn
that the directory is not empty, ``file_exists`` for its version counter (``-v1`` names) and,
for ``ckpt_path="last"``, to check the candidates. With a cloudckpt checkpoint being a prefix,
those calls see it as a directory, which fsspec's ``exists``/``ls`` report like a file. For
them to reach the same bucket, fsspec's defaults must: ambient credentials on AWS/GCP/Azure, or
for a custom endpoint (MinIO, moto) ``fsspec.config.conf["s3"] = {"endpoint_url": ..., ...}``
or the ``FSSPEC_S3_*`` / ``AWS_ENDPOINT_URL`` environment variables. After each save and
removal the plugin drops that filesystem's listing cache for the path so those checks do not
go stale.

The private Lightning APIs used (by :class:`CloudckptModelCheckpoint` and
:func:`load_from_checkpoint` only) and their version gate are in :mod:`._private`.
"""

from __future__ import annotations

from cloudckpt.integrations.lightning._private import (
    SUPPORTED_LIGHTNING,
    CloudckptModelCheckpoint,
    check_lightning,
)
from cloudckpt.integrations.lightning.encoding import (
    FORMAT,
    RESERVED_KEY,
    TYPES,
    decode_checkpoint,
    encode_checkpoint,
)
from cloudckpt.integrations.lightning.io import CloudckptIO, summary_metadata
from cloudckpt.integrations.lightning.resume import find_checkpoint, load_from_checkpoint

__all__ = ["FORMAT", "RESERVED_KEY", "SUPPORTED_LIGHTNING", "TYPES", "CloudckptIO",
           "CloudckptModelCheckpoint", "check_lightning", "decode_checkpoint",
           "encode_checkpoint", "find_checkpoint", "load_from_checkpoint", "summary_metadata"]
