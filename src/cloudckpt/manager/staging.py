"""Host staging buffers for async saves: the snapshot the training thread takes before it
continues. Buffers are kept and reused across saves (same model, same sizes: no new memory
after the first save), pinned when the source is on a CUDA device so device-to-host copies
are DMA transfers. Cost: one host copy of the saved tensors, held for the manager's life.
"""

from __future__ import annotations

import numpy as np
import torch

from cloudckpt.format.tree import Leaf

__all__ = ["Stager"]


class Stager:
    """Copies leaves into reused host buffers. Used by one thread at a time (the training
    thread, while no background save reads the buffers)."""

    def __init__(self) -> None:
        self._torch: dict[int, torch.Tensor] = {}
        self._numpy: dict[int, np.ndarray] = {}

    @property
    def nbytes(self) -> int:
        """Host memory held by the buffers."""
        return sum(b.numel() for b in self._torch.values()) + sum(
            b.nbytes for b in self._numpy.values())

    def _torch_buffer(self, i: int, nbytes: int, pinned: bool) -> torch.Tensor:
        buf = self._torch.get(i)
        if buf is None or buf.numel() < nbytes or (pinned and not buf.is_pinned()):
            buf = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=pinned)
            self._torch[i] = buf
        return buf

    def stage(self, leaves: list[Leaf]) -> list[Leaf]:
        """Snapshot ``leaves``; returns leaves that point into the staging buffers. Returns
        only when every copy has landed (device copies included)."""
        out: list[Leaf] = []
        cuda = False
        for leaf in leaves:
            v = leaf.value
            if isinstance(v, torch.Tensor):
                src = v.detach()
                nbytes = src.numel() * src.element_size()
                pinned = src.is_cuda and torch.cuda.is_available()
                buf = self._torch_buffer(leaf.index, nbytes, pinned)
                dst = buf[:nbytes].view(src.dtype).reshape(src.shape)
                dst.copy_(src, non_blocking=pinned)
                cuda = cuda or pinned
                out.append(Leaf(leaf.path, dst, leaf.index, str(v.device)))
            else:
                nb = buf_np = self._numpy.get(leaf.index)
                if nb is None or nb.nbytes < v.nbytes:
                    buf_np = self._numpy[leaf.index] = np.empty(max(v.nbytes, 1), np.uint8)
                assert buf_np is not None
                dst_np = buf_np[: v.nbytes].view(v.dtype).reshape(v.shape)
                np.copyto(dst_np, v)
                out.append(Leaf(leaf.path, dst_np, leaf.index, "cpu"))
        if cuda:
            torch.cuda.synchronize()
        return out
