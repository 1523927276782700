"""The ``TrainerState`` as a checkpoint stores it: the JSON-compatible dict that
``TrainerState.save_to_json`` writes, under ``extra[STATE_KEY]``. Shared by the callback (which
writes it), the trainer (which resumes from it) and users (who read it without resuming).
Public ``transformers`` API only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

from transformers import TrainerState

from cloudckpt.errors import InvalidArgument, UnsupportedValue
from cloudckpt.integrations.hf._names import STATE_KEY

__all__ = ["STATE_KEY", "trainer_state_from_dict", "trainer_state_to_dict"]

log = logging.getLogger("cloudckpt.integrations.hf")


def trainer_state_to_dict(state: Any) -> dict[str, Any]:
    """``TrainerState`` -> the dict ``TrainerState.save_to_json`` would write (JSON types only,
    so it round-trips exactly as HF's own files do). Called by :class:`CloudckptCallback`.

    Raises:
        UnsupportedValue: the state holds something JSON cannot represent (HF's own
            ``save_to_json`` would fail on it too).
    """
    try:
        out: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(state)))
    except (TypeError, ValueError) as e:
        raise UnsupportedValue(f"TrainerState is not JSON-serialisable: {e}") from e
    return out


def trainer_state_from_dict(data: Mapping[str, Any]) -> Any:
    """Rebuild a ``TrainerState`` as ``TrainerState.load_from_json`` does; fields this
    transformers version does not know are dropped with a WARNING. Called by users who want
    the state of a checkpoint without resuming (``cloudckpt.load(uri, keys=["extra"])``).

    Raises:
        InvalidArgument: ``data`` is not a mapping.
    """
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"a TrainerState dict is expected, not {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(TrainerState)}
    unknown = sorted(set(data) - known)
    if unknown:
        log.warning("ignoring TrainerState fields unknown to this transformers version: %s",
                    unknown)
    return TrainerState(**{k: v for k, v in data.items() if k in known})
