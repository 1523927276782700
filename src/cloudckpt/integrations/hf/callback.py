"""The public half of the Hugging Face integration: :class:`CloudckptCallback`, a
``TrainerCallback`` that commits every checkpoint the ``Trainer`` decides to save to a bucket URI,
applies the ``Trainer``'s rotation rule there, and with ``load_best_model_at_end`` loads the best
checkpoint's weights when training ends.

It uses only public ``TrainerCallback`` hooks (``on_train_begin``, ``on_evaluate``, ``on_save``,
``on_train_end``) and public ``TrainingArguments``/``TrainerState`` fields, so it is not bound to
the private ``Trainer`` methods that :class:`CloudckptTrainer` overrides (see
``_trainer_hooks``). With a plain ``Trainer`` it *mirrors* each local checkpoint to the bucket.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback

import cloudckpt
from cloudckpt.engine.writer import SaveInfo
from cloudckpt.errors import AlreadyExists, InvalidArgument
from cloudckpt.integrations.hf._rotation import HFRotation, metric_name, numeric_metrics
from cloudckpt.integrations.hf._state import STATE_KEY, trainer_state_to_dict
from cloudckpt.manager import CheckpointManager, CheckpointRecord, resolve_step

__all__ = ["CloudckptCallback"]

log = logging.getLogger("cloudckpt.integrations.hf")


class CloudckptCallback(TrainerCallback):  # type: ignore[misc, unused-ignore]
    """Save (and at the end, load the best) ``Trainer`` checkpoints through cloudckpt.

    ``uri``: the run root (``s3://bucket/run``, ``gs://...``, a local path...).
    ``storage_options``: fsspec options for the store. ``compression``: as for
    :func:`cloudckpt.save`. ``manager_options``: extra :class:`~cloudckpt.CheckpointManager`
    arguments (``archive=``, ``retention=`` to replace the rotation rule, ``async_options=``...).
    The manager itself is built from the ``TrainingArguments`` at the first event
    (:meth:`manager`). Add it with ``Trainer(callbacks=[CloudckptCallback(uri)])`` or use
    :class:`CloudckptTrainer`.
    """

    def __init__(self, uri: str, *, storage_options: Mapping[str, Any] | None = None,
                 compression: str = "auto",
                 manager_options: Mapping[str, Any] | None = None) -> None:
        self.uri = uri
        self.storage_options: dict[str, Any] | None = \
            dict(storage_options) if storage_options is not None else None
        self.compression = compression
        self.manager_options = dict(manager_options or {})
        self._manager: CheckpointManager | None = None
        self._eval: tuple[int, dict[str, float]] | None = None
        self._saved_step: int | None = None
        self.last_save: SaveInfo | None = None

    # -- the manager ----------------------------------------------------------------------
    def manager(self, args: Any) -> CheckpointManager:
        """The :class:`~cloudckpt.CheckpointManager` for this run, built once from ``args``
        (``save_total_limit``, ``metric_for_best_model``, ``greater_is_better``).

        Raises:
            InvalidURI, InvalidArgument: bad ``uri`` or ``manager_options``.
        """
        if self._manager is None:
            metric = metric_name(args)
            mode = "max" if getattr(args, "greater_is_better", False) else "min"
            limit = getattr(args, "save_total_limit", None)
            opts: dict[str, Any] = {"metric": metric, "mode": mode, "keep_last": None,
                                    "keep_best": 1 if metric else None,
                                    "compression": self.compression}
            if limit is not None and limit > 0:
                opts["retention"] = HFRotation(int(limit), metric, mode)
            opts.update(self.manager_options)
            self._manager = CheckpointManager(self.uri, storage_options=self.storage_options,
                                              **opts)
        return self._manager

    def _load_options(self, mgr: CheckpointManager, rec: CheckpointRecord) -> Any:
        return self.storage_options if rec.location == "hot" else mgr.archive_storage_options

    def record(self, args: Any, step: int | str = "latest") -> CheckpointRecord | None:
        """The committed checkpoint for ``step`` (``"latest"``, ``"best"`` or an int);
        ``None`` when the run has none (``"latest"``/``"best"``).

        Raises:
            NotFound: an int ``step`` that is not committed.
            InvalidArgument: any other ``step``.
        """
        mgr = self.manager(args)
        records = mgr.checkpoints()
        chosen = mgr.latest() if step == "latest" else \
            resolve_step(records, step, mgr.metric, mgr.mode, uri=mgr.uri)
        return None if chosen is None else next(r for r in records if r.step == chosen)

    # -- saving ---------------------------------------------------------------------------
    def save(self, args: Any, state: Any, *, model: Any, optimizer: Any = None,
             lr_scheduler: Any = None, scaler: Any = None) -> SaveInfo | None:
        """Commit a checkpoint of the current step (``state.global_step``), then apply
        retention. Only the process with ``args.should_save`` writes; the others return
        ``None``. With ``args.save_only_model`` only the model and the trainer state are
        saved (as the ``Trainer`` does). Called by :meth:`on_save` and by
        :meth:`CloudckptTrainer._save_checkpoint`, on the training thread.

        Raises:
            AlreadyExists: that step is already committed under the URI by another run.
            UnsupportedValue: something in the state cannot be stored; nothing written.
            StorageError and subclasses: the save failed; nothing committed.
        """
        if not getattr(args, "should_save", True):
            return None
        step = int(state.global_step)
        if self._saved_step == step:
            return self.last_save
        mgr = self.manager(args)
        metrics = self._eval[1] if self._eval is not None and self._eval[0] == step else {}
        objects: dict[str, Any] = {"model": model}
        only_model = bool(getattr(args, "save_only_model", False))
        if not only_model:
            objects.update(optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler)
        import transformers

        extra = {STATE_KEY: trainer_state_to_dict(state),
                 "transformers_version": transformers.__version__}
        epoch = state.epoch
        try:
            info = mgr.save(step, epoch=int(epoch) if epoch is not None and math.isfinite(epoch)
                            else None, metrics=metrics, extra=extra, rng=not only_model,
                            **{k: v for k, v in objects.items() if v is not None})
        except AlreadyExists as e:
            raise AlreadyExists(
                f"step {step} is already committed under {mgr.uri}: another run wrote this URI. "
                "Resume from it (CloudckptTrainer resumes by default) or use a new URI") from e
        self._saved_step = step
        self.last_save = info
        return info

    # -- Trainer events -------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Fail early, before any training, when the URI already holds checkpoints newer
        than the step training starts from: saving would collide with them.

        Raises:
            AlreadyExists: see above.
        """
        if getattr(args, "save_strategy", "no") == "no" or not getattr(args, "should_save", True):
            return
        mgr = self.manager(args)
        newer = [s for s in mgr.steps() if s > state.global_step]
        if newer:
            raise AlreadyExists(
                f"{mgr.uri} already holds checkpoints for steps {newer}, newer than step "
                f"{state.global_step} where this training starts; its saves would collide. "
                "Resume from the latest one, use a new URI, or delete them "
                "(CheckpointManager.delete)")

    def on_evaluate(self, args: Any, state: Any, control: Any,
                    metrics: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """Remember the evaluation metrics of this step for the checkpoint saved next."""
        self._eval = (int(state.global_step), numeric_metrics(metrics))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The ``Trainer`` just saved (locally): commit the same step to the URI, unless
        :class:`CloudckptTrainer` already did.

        Raises:
            See :meth:`save`.
        """
        if self._saved_step == state.global_step:
            return
        model = kwargs.get("model")
        if model is None:
            raise InvalidArgument("CloudckptCallback.on_save: the Trainer passed no model")
        self.save(args, state, model=model, optimizer=kwargs.get("optimizer"),
                  lr_scheduler=kwargs.get("lr_scheduler"))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """With ``load_best_model_at_end``: load the best checkpoint's weights into the model
        (the ``Trainer``'s ``best_global_step`` when committed, else the best by metric) and
        point ``state.best_model_checkpoint`` at its URI. Skipped when the ``Trainer`` already
        loaded a local best checkpoint (plain ``Trainer``, mirror mode).

        Raises:
            CorruptCheckpoint, StorageError: the best checkpoint cannot be read.
        """
        model = kwargs.get("model")
        if not getattr(args, "load_best_model_at_end", False) or model is None:
            return
        if state.best_model_checkpoint is not None and os.path.isdir(state.best_model_checkpoint):
            return  # the Trainer loaded its local best checkpoint already
        mgr = self.manager(args)
        records = {r.step: r for r in mgr.checkpoints()}
        step = state.best_global_step if state.best_global_step in records else mgr.best()
        if step is None:
            log.warning("load_best_model_at_end: no checkpoint under %s reports %r; keeping the "
                        "last weights", mgr.uri, mgr.metric)
            return
        rec = records[step]
        tree = cloudckpt.load(rec.uri, keys=["objects/model"],
                              storage_options=self._load_options(mgr, rec))
        model.load_state_dict(tree["objects"]["model"])
        state.best_model_checkpoint = rec.uri
        log.info("loaded the best model (step %d, %s=%s) from %s", step, mgr.metric,
                 rec.metrics.get(mgr.metric or ""), rec.uri)
