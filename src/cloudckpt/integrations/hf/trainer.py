"""The ``Trainer`` half of the Hugging Face integration: :class:`CloudckptTrainer`, a
``Trainer`` whose checkpoints live only at a bucket URI and that resumes from there.

This module holds its public surface (constructor, ``train``, ``save_model`` and which
checkpoint to resume); the private ``Trainer`` methods it needs are overridden in
``_trainer_hooks``, which checks the installed ``transformers`` when imported (see there and
the package docstring).

Resuming is a restore through the run's :class:`~cloudckpt.CheckpointManager`, so it follows
the run's lineage (:mod:`cloudckpt.manager.lineage`): resuming from the latest checkpoint
continues the run; resuming from an older one (``"best"``, an int step) *forks* it. The
checkpoints newer than the fork point stay in the store but leave the live lineage:
``latest``, auto-resume and retention no longer see them, and this run's saves of those steps
replace them (``cloudckpt ls --json`` and ``cloudckpt report`` show each checkpoint's generation).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from cloudckpt.errors import InvalidArgument, NotFound
from cloudckpt.integrations.hf._names import STATE_KEY, is_remote
from cloudckpt.integrations.hf._trainer_hooks import TrainerHooks
from cloudckpt.integrations.hf.callback import CloudckptCallback
from cloudckpt.integrations.hf.pretrained import export_pretrained
from cloudckpt.manager.lineage import live_records
from cloudckpt.manager.options import PreemptionOptions
from cloudckpt.storage import Store

__all__ = ["CloudckptTrainer"]

log = logging.getLogger("cloudckpt.integrations.hf")

_OBJECTS = ("model", "optimizer", "lr_scheduler", "scaler")


class _Capture:
    """Stands in for an object during the manager's restore and keeps the state it is given,
    for the ``Trainer`` to load when the real object exists."""

    def __init__(self) -> None:
        self.state: Any = None

    def load_state_dict(self, state: Any) -> None:
        self.state = state


class CloudckptTrainer(TrainerHooks):  # type: ignore[misc, unused-ignore]
    """A ``Trainer`` whose checkpoints live only at ``checkpoint_uri`` and that resumes from
    there. All ``Trainer`` arguments are accepted; in addition:

    ``checkpoint_uri``, ``storage_options``, ``compression``, ``manager_options``: see
    :class:`CloudckptCallback`. ``async_save``: save in the background (the training thread
    only snapshots the tensors); every save is committed (or its error raised) before
    ``train()`` returns, and ``load_best_model_at_end`` waits for them. ``preemption``
    (``True`` or a :class:`~cloudckpt.PreemptionOptions`): on SIGTERM/SIGUSR1 the ``Trainer``
    stops at the next step boundary and saves that step; ``train()`` then raises
    ``SystemExit(0)`` (the process exits with status 0) unless ``exit_on_preemption`` is
    false (then it returns, with :attr:`preempted` true). ``auto_resume``: ``train()``
    without ``resume_from_checkpoint`` continues from the latest committed checkpoint of the
    live lineage when there is one (default true; ``train(resume_from_checkpoint=False)``
    always starts fresh).

    ``train(resume_from_checkpoint=...)`` also accepts ``True``/``"latest"`` (the latest,
    which must exist), ``"best"`` or an int step at the URI (a fork of the run: see the
    module docstring); a local path keeps the ``Trainer``'s meaning (an HF checkpoint
    directory). ``save_model(uri)`` with a URI (``s3://...``, ``file://...``) writes a
    ``from_pretrained`` directory there (:func:`export_pretrained`, with the processing class);
    a local path keeps the ``Trainer``'s meaning.

    Raises (constructor): InvalidArgument with DeepSpeed or FSDP (not supported), or a bad
    ``preemption``/``async_save``.
    """

    def __init__(self, *args: Any, checkpoint_uri: str | Store,
                 storage_options: Mapping[str, Any] | None = None, compression: str = "auto",
                 manager_options: Mapping[str, Any] | None = None, auto_resume: bool = True,
                 async_save: bool = False, preemption: PreemptionOptions | bool = False,
                 exit_on_preemption: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False):
            raise InvalidArgument("CloudckptTrainer does not support DeepSpeed or FSDP (their "
                                  "state is sharded); see cloudckpt.dcp")
        self.cloudckpt = CloudckptCallback(checkpoint_uri, storage_options=storage_options,
                                           compression=compression,
                                           manager_options=manager_options,
                                           async_save=async_save, preemption=preemption,
                                           exit_on_preemption=False)
        self.add_callback(self.cloudckpt)
        self.auto_resume = auto_resume
        self.exit_on_preemption = exit_on_preemption
        self._cloudckpt_resume = None

    @property
    def preempted(self) -> bool:
        """Whether a preemption signal stopped the last ``train()``."""
        return self.cloudckpt.preempted

    # -- resuming -------------------------------------------------------------------------
    def _selector(self, resume_from_checkpoint: Any) -> int | str | None:
        """What to restore: ``"latest"``, ``"best"``, a step, ``"auto"`` (the latest if any)
        or ``None`` (start fresh, or a local checkpoint directory)."""
        if resume_from_checkpoint is None:
            return "auto" if self.auto_resume else None
        if resume_from_checkpoint is True or resume_from_checkpoint in ("latest", "best"):
            which = "best" if resume_from_checkpoint == "best" else "latest"
            if which == "best" and self.cloudckpt.manager(self.args).metric is None:
                raise InvalidArgument("resume_from_checkpoint='best' needs "
                                      "metric_for_best_model in the TrainingArguments")
            return which
        if isinstance(resume_from_checkpoint, int) and not isinstance(resume_from_checkpoint, bool):
            return resume_from_checkpoint
        return None

    def train(self, resume_from_checkpoint: str | bool | int | None = None, trial: Any = None,
              ignore_keys_for_eval: list[str] | None = None) -> Any:
        """Train, resuming from the URI as described in the class docstring. Returns once
        every checkpoint it saved is committed.

        Raises:
            NotFound: the requested checkpoint does not exist.
            InvalidArgument: the checkpoint was not written by :class:`CloudckptCallback`;
                ``"best"`` without ``metric_for_best_model``.
            CorruptCheckpoint, StorageError: it cannot be read, or a save failed.
            SystemExit(0): preempted (``preemption``), after the final checkpoint committed.
            Whatever ``Trainer.train`` raises.
        """
        which = self._selector(resume_from_checkpoint)
        self.cloudckpt.resumed = False
        try:
            if which is None:  # fresh, or a local HF checkpoint directory
                local = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) \
                    else None
                out = super().train(resume_from_checkpoint=local, trial=trial,
                                    ignore_keys_for_eval=ignore_keys_for_eval)
            else:
                out = self._resume(which, trial, ignore_keys_for_eval)
        finally:
            self.cloudckpt.release_signals()
        if self.preempted and self.exit_on_preemption:
            self.cloudckpt.exit_after_preemption(self.state)
        return out

    def _resume(self, which: int | str, trial: Any, ignore_keys_for_eval: Any) -> Any:
        mgr = self.cloudckpt.manager(self.args)
        captures: dict[str, Any] = {name: _Capture() for name in _OBJECTS}
        restored = mgr.restore("latest" if which == "auto" else which, rng=False, strict=False,
                               **captures)
        if restored is None:
            if which != "auto":
                raise NotFound(f"no committed checkpoint ({which}) under {mgr.uri}")
            return super().train(resume_from_checkpoint=None, trial=trial,
                                 ignore_keys_for_eval=ignore_keys_for_eval)
        hf_state = restored.extra.get(STATE_KEY)
        if not isinstance(hf_state, dict):
            raise InvalidArgument(f"{restored.uri} has no Trainer state: not written by "
                                  "CloudckptCallback")
        rec = next(r for r in mgr.checkpoints() if r.step == restored.step)
        newer = [r.step for r in live_records(mgr.context) if r.step > rec.step]
        log.warning("resuming from %s (step %d)%s", rec.uri, rec.step,
                    f": the run forks here; steps {newer} leave its live lineage (they stay in "
                    "the store; this run's saves of those steps replace them)" if newer else "")
        # the Trainer drops a best_model_checkpoint that is not a local directory (with a
        # warning); the callback points it at the best step's URI once training begins
        hf_state = {**hf_state, "best_model_checkpoint": None}
        self.cloudckpt.resumed = True
        trees = {name: c.state for name, c in captures.items() if c.state is not None}
        return self._train_from_cloud(rec.step, (rec.uri, mgr.context.record_store(rec), trees),
                                      hf_state, trial=trial,
                                      ignore_keys_for_eval=ignore_keys_for_eval)

    # -- exporting ------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model for ``from_pretrained``: to a URI (``s3://bucket/model``,
        ``file:///...``) through :func:`export_pretrained` (with the processing class, on the
        main process, using this trainer's ``storage_options``); a local path (or none: the
        ``output_dir``) as the ``Trainer`` does.

        Raises:
            InvalidURI: a malformed URI (``s3:/bucket``).
            StorageError: the upload failed. As ``Trainer.save_model`` for local paths.
        """
        if output_dir is None or not is_remote(os.fspath(output_dir)):
            super().save_model(output_dir, _internal_call)
            return
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model)
        export_pretrained(model, output_dir, processing_class=self.processing_class,
                          storage_options=self.cloudckpt.storage_options)
