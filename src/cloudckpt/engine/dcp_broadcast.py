"""Restore by broadcast: a stored item every rank reads is fetched from storage by one rank and
sent to the others over the process group (DDP weights, the replicated parts of FSDP/TP).

Who calls what (see :class:`cloudckpt.engine.dcp.Reader` with ``broadcast=True``):

1. the coordinator, in ``prepare_global_plan``, calls :func:`assign` with every rank's stored
   items: the items *every* rank reads get one source rank each (biggest first, to the rank
   with the fewest bytes assigned so far, so the fetches spread over the ranks), in one order
   shared by all ranks; it travels in each rank's plan as :class:`Broadcasts`;
2. every rank, in ``read_data``, fetches its own items plus those it is the source of
   (:func:`to_fetch`), then calls :func:`exchange` -- collectively, on the default process
   group, even with nothing to fetch. A rank whose fetch failed says so in one all-reduce
   first, so no rank is left waiting in a broadcast: every rank then raises.

Bytes read from storage for a replicated item: once per run instead of once per rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from cloudckpt.errors import CorruptCheckpoint
from cloudckpt.format.dtypes import torch_dtype
from cloudckpt.format.manifest import Manifest

__all__ = ["Broadcasts", "assign", "exchange", "to_fetch"]


@dataclass(frozen=True)
class Broadcasts:
    """The coordinator's assignment: ``(tensor index in the manifest, source rank)`` for each
    stored item every rank reads, in the order every rank broadcasts them."""

    items: tuple[tuple[int, int], ...]


def assign(needs: Sequence[set[int]], m: Manifest) -> Broadcasts:
    """Source ranks for the items in every set of ``needs`` (one set of tensor indices per
    rank, in rank order). Pure; the coordinator calls it."""
    common = set.intersection(*needs) if needs else set()
    load = [0] * len(needs)
    out: list[tuple[int, int]] = []
    for ti in sorted(common, key=lambda i: (-m.tensors[i].nbytes, i)):
        src = min(range(len(needs)), key=lambda r: (load[r], r))
        load[src] += m.tensors[ti].nbytes
        out.append((ti, src))
    return Broadcasts(tuple(sorted(out)))


def to_fetch(mine: set[int], plan: Broadcasts | None, rank: int) -> list[int]:
    """The tensor indices this rank reads from storage: its own, less those another rank
    fetches and broadcasts."""
    if plan is None:
        return sorted(mine)
    others = {ti for ti, src in plan.items if src != rank}
    return sorted(mine - others)


def exchange(values: dict[int, Any], plan: Broadcasts | None, m: Manifest,
             error: BaseException | None) -> dict[int, Any]:
    """Collective: share whether every rank fetched its items, then broadcast each assigned
    item from its source into ``values`` (allocated here on the receiving ranks).

    Raises:
        ``error`` (this rank's fetch failed), or CorruptCheckpoint: another rank's did.
    """
    if plan is None:
        if error is not None:
            raise error
        return values
    failed = torch.tensor([0 if error is None else 1], dtype=torch.int64)
    dist.all_reduce(failed)
    if error is not None:
        raise error
    if int(failed.item()):
        raise CorruptCheckpoint(f"{int(failed.item())} other rank(s) failed to read their "
                                "part of the checkpoint (see their errors)")
    rank = dist.get_rank()
    for ti, src in plan.items:
        if rank == src:
            t = values[ti]
        else:
            rec = m.tensors[ti]
            t = torch.empty(rec.shape, dtype=torch_dtype(rec.dtype))
        dist.broadcast(t, src=src)
        values[ti] = t
    return values

