"""The ``Trainer`` half of the Hugging Face integration: :class:`CloudckptTrainer`, a
``Trainer`` whose checkpoints live only at a bucket URI and that resumes from there.

This module holds its public surface (constructor, ``train`` and which checkpoint to resume);
the private ``Trainer`` methods it needs are overridden in ``_trainer_hooks``, which checks the
installed ``transformers`` when imported (see there and the package docstring).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import cloudckpt
from cloudckpt.errors import InvalidArgument, NotFound
from cloudckpt.integrations.hf._state import STATE_KEY
from cloudckpt.integrations.hf._trainer_hooks import TrainerHooks
from cloudckpt.integrations.hf.callback import CloudckptCallback
from cloudckpt.manager import CheckpointRecord

__all__ = ["CloudckptTrainer"]

log = logging.getLogger("cloudckpt.integrations.hf")


class CloudckptTrainer(TrainerHooks):  # type: ignore[misc, unused-ignore]
    """A ``Trainer`` whose checkpoints live only at ``checkpoint_uri`` and that resumes from
    there. All ``Trainer`` arguments are accepted; in addition:

    ``checkpoint_uri``, ``storage_options``, ``compression``, ``manager_options``: see
    :class:`CloudckptCallback`. ``auto_resume``: ``train()`` without
    ``resume_from_checkpoint`` continues from the latest committed checkpoint when there is
    one (default true; ``train(resume_from_checkpoint=False)`` always starts fresh).

    ``train(resume_from_checkpoint=...)`` also accepts ``True``/``"latest"`` (the latest,
    which must exist), ``"best"`` or an int step at the URI; a local path keeps the
    ``Trainer``'s meaning (an HF checkpoint directory).

    Raises (constructor): InvalidArgument with DeepSpeed or FSDP (not supported).
    """

    def __init__(self, *args: Any, checkpoint_uri: str,
                 storage_options: Mapping[str, Any] | None = None, compression: str = "auto",
                 manager_options: Mapping[str, Any] | None = None, auto_resume: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False):
            raise InvalidArgument("CloudckptTrainer does not support DeepSpeed or FSDP (their "
                                  "state is sharded); see cloudckpt.dcp")
        self.cloudckpt = CloudckptCallback(checkpoint_uri, storage_options=storage_options,
                                           compression=compression,
                                           manager_options=manager_options)
        self.add_callback(self.cloudckpt)
        self.auto_resume = auto_resume
        self._cloudckpt_resume = None

    # -- resuming -------------------------------------------------------------------------
    def _resume_record(self, resume_from_checkpoint: Any) -> CheckpointRecord | None:
        if resume_from_checkpoint is None:
            if not self.auto_resume:
                return None
            rec = self.cloudckpt.record(self.args, "latest")
            if rec is not None:
                log.warning("resuming from the latest checkpoint at %s (step %d)", rec.uri,
                            rec.step)
            return rec
        if resume_from_checkpoint is True or resume_from_checkpoint in ("latest", "best"):
            which = "best" if resume_from_checkpoint == "best" else "latest"
            rec = self.cloudckpt.record(self.args, which)
            if rec is None:
                raise NotFound(f"no committed checkpoint ({which}) under {self.cloudckpt.uri}")
            return rec
        if isinstance(resume_from_checkpoint, int) and not isinstance(resume_from_checkpoint, bool):
            return self.cloudckpt.record(self.args, resume_from_checkpoint)
        return None

    def train(self, resume_from_checkpoint: str | bool | int | None = None, trial: Any = None,
              ignore_keys_for_eval: list[str] | None = None) -> Any:
        """Train, resuming from the URI as described in the class docstring.

        Raises:
            NotFound: the requested checkpoint does not exist.
            InvalidArgument: the checkpoint was not written by :class:`CloudckptCallback`.
            CorruptCheckpoint, StorageError: it cannot be read.
            Whatever ``Trainer.train`` raises.
        """
        rec = self._resume_record(resume_from_checkpoint)
        if rec is None:  # fresh, or a local HF checkpoint directory
            local = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
            return super().train(resume_from_checkpoint=local, trial=trial,
                                 ignore_keys_for_eval=ignore_keys_for_eval)
        mgr = self.cloudckpt.manager(self.args)
        opts = self.cloudckpt._load_options(mgr, rec)
        head = cloudckpt.load(rec.uri, keys=["extra", "metrics_history"], storage_options=opts)
        hf_state = head["extra"].get(STATE_KEY)
        if not isinstance(hf_state, dict):
            raise InvalidArgument(f"{rec.uri} has no Trainer state: not written by "
                                  "CloudckptCallback")
        # metrics history of the run continues in the manifests written from here on
        mgr.metrics_history = [(int(s), dict(m)) for s, m in head.get("metrics_history") or []]
        return self._train_from_cloud(rec.step, rec.uri, opts, hf_state, trial=trial,
                                      ignore_keys_for_eval=ignore_keys_for_eval)
