"""``torch.distributed.checkpoint`` storage backed by cloudckpt: the public face of
:mod:`cloudckpt.engine.dcp`.

``dcp.save(state_dict, storage_writer=cloudckpt.dcp.Writer("s3://bucket/ckpt"))`` and
``dcp.load(state_dict, storage_reader=cloudckpt.dcp.Reader("s3://bucket/ckpt"))``.
"""

from cloudckpt.engine.dcp import Reader, Writer

__all__ = ["Reader", "Writer"]
