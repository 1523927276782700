"""The public half of the Hugging Face integration: :class:`CloudckptCallback`, a
``TrainerCallback`` that commits every checkpoint the ``Trainer`` decides to save to a bucket URI,
applies the ``Trainer``'s rotation rule there, handles preemption signals, and with
``load_best_model_at_end`` loads the best checkpoint's weights when training ends.

It uses only public ``TrainerCallback`` hooks (``on_train_begin``, ``on_step_end``,
``on_evaluate``, ``on_save``, ``on_train_end``) and public ``TrainingArguments``/``TrainerState``
fields, so it is not bound to the private ``Trainer`` methods that :class:`CloudckptTrainer`
overrides (see ``_trainer_hooks``). With a plain ``Trainer`` it *mirrors* each local checkpoint
to the bucket.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback

import cloudckpt
from cloudckpt.engine.writer import SaveInfo
from cloudckpt.errors import AlreadyExists, InvalidArgument
from cloudckpt.integrations.hf._names import CONFIG_KEY
from cloudckpt.integrations.hf._rotation import HFRotation, metric_name, numeric_metrics
from cloudckpt.integrations.hf._state import STATE_KEY, trainer_state_to_dict
from cloudckpt.manager import AsyncOptions, CheckpointManager, CheckpointRecord, resolve_step
from cloudckpt.manager.lineage import live_records
from cloudckpt.manager.options import PreemptionOptions, preemption_options
from cloudckpt.manager.preemption import PreemptionWatch
from cloudckpt.storage import Store

__all__ = ["CloudckptCallback"]

log = logging.getLogger("cloudckpt.integrations.hf")


def model_config(model: Any) -> dict[str, Any] | None:
    """The model's ``config.json`` content (``PreTrainedModel.config``), ``None`` without one."""
    config = getattr(model, "config", None)
    to_json = getattr(config, "to_json_string", None)
    if not callable(to_json):
        return None
    try:
        out = json.loads(to_json(use_diff=False))
    except (TypeError, ValueError) as e:
        log.warning("not storing the model config (%s): %s", type(config).__name__, e)
        return None
    return out if isinstance(out, dict) else None


class CloudckptCallback(TrainerCallback):  # type: ignore[misc, unused-ignore]
    """Save (and at the end, load the best) ``Trainer`` checkpoints through cloudckpt.

    ``uri``: the run root (``s3://bucket/run``, ``gs://...``, a local path..., or a
    :class:`~cloudckpt.storage.Store`).
    ``storage_options``: fsspec options for the store. ``compression``: as for
    :func:`cloudckpt.save`. ``async_save``: save in the background (the training thread only
    snapshots the tensors; see :class:`~cloudckpt.AsyncOptions`); every save is committed, or
    its error raised, before ``train()`` returns. ``preemption``: ``True`` or a
    :class:`~cloudckpt.PreemptionOptions`: during ``train()``, SIGTERM/SIGUSR1 make the
    ``Trainer`` stop at the next step boundary, save that step, and (``exit_on_preemption``)
    the process exit with status 0 once the checkpoint is committed. ``manager_options``:
    extra :class:`~cloudckpt.CheckpointManager` arguments (``archive=``, ``retention=`` to
    replace the rotation rule, ``commit_options=``...; ``preemption=`` there means the same as
    here). The manager itself is built from the ``TrainingArguments`` at the first event
    (:meth:`manager`). Add it with ``Trainer(callbacks=[CloudckptCallback(uri)])`` or use
    :class:`CloudckptTrainer`.

    Raises (constructor): InvalidArgument: a bad ``preemption`` or ``async_save``.
    """

    def __init__(self, uri: str | Store, *, storage_options: Mapping[str, Any] | None = None,
                 compression: str = "auto", manager_options: Mapping[str, Any] | None = None,
                 async_save: bool = False, preemption: PreemptionOptions | bool = False,
                 exit_on_preemption: bool = True) -> None:
        self.uri = uri
        self.storage_options: dict[str, Any] | None = \
            dict(storage_options) if storage_options is not None else None
        self.compression = compression
        self.manager_options = dict(manager_options or {})
        if preemption is False and "preemption" in self.manager_options:
            preemption = self.manager_options["preemption"]
        self.manager_options.pop("preemption", None)  # handled here, per train() call
        self.preemption = preemption_options(preemption)
        if not isinstance(async_save, bool):
            raise InvalidArgument(f"async_save must be True or False, not {async_save!r}")
        self.async_save = async_save
        self.exit_on_preemption = exit_on_preemption
        self._manager: CheckpointManager | None = None
        self._watch: PreemptionWatch | None = None
        self._eval: tuple[int, dict[str, float]] | None = None
        self._saved_step: int | None = None
        self._best_loaded = False
        #: set by CloudckptTrainer when ``train()`` restored a checkpoint of the URI
        self.resumed = False
        #: whether a preemption signal stopped the last ``train()``
        self.preempted = False
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
            if self.async_save:
                opts["async_options"] = AsyncOptions(blocking=False)
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

    def wait(self) -> None:
        """Wait until every save of this callback is committed (async saves).

        Raises:
            The background save's error.
        """
        if self._manager is not None:
            self._manager.wait()

    # -- saving ---------------------------------------------------------------------------
    def save(self, args: Any, state: Any, *, model: Any, optimizer: Any = None,
             lr_scheduler: Any = None, scaler: Any = None) -> SaveInfo | None:
        """Commit a checkpoint of the current step (``state.global_step``), then apply
        retention. Only the process with ``args.should_save`` writes; the others return
        ``None``. With ``args.save_only_model`` only the model and the trainer state are
        saved (as the ``Trainer`` does). With ``async_save`` this returns ``None`` once the
        tensors are snapshotted. Called by :meth:`on_save` and by
        :meth:`CloudckptTrainer._save_checkpoint`, on the training thread.

        Raises:
            AlreadyExists: that step is already committed under the URI in this run's
                lineage (another run wrote this URI).
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

        extra: dict[str, Any] = {STATE_KEY: trainer_state_to_dict(state),
                                 "transformers_version": transformers.__version__}
        config = model_config(model)
        if config is not None:
            extra[CONFIG_KEY] = config
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
        """Install the preemption handlers (with ``preemption``). Then, unless this run was
        restored from the URI: when the URI's live lineage holds checkpoints newer than the
        step training starts from, fork the run at that step if the URI has it (a plain
        ``Trainer`` resumed from a local ``checkpoint-N``: the checkpoint is read once to claim
        the new lineage, and later saves replace the newer steps), else fail early, before
        any training, as its saves would collide.

        Raises:
            AlreadyExists: see above.
            InvalidArgument: ``preemption`` requested outside the main thread.
        """
        self._saved_step, self._best_loaded, self.preempted = None, False, False
        self.release_signals()  # a train() that raised left them installed
        if self.preemption is not None:
            self._watch = PreemptionWatch(self.preemption.signals, self.preemption.deadline)
        if getattr(args, "save_strategy", "no") == "no" or not getattr(args, "should_save", True):
            return
        mgr = self.manager(args)
        if self.resumed:
            self._point_at_best(mgr, state)
            return
        step = int(state.global_step)
        live = live_records(mgr.context)
        newer = [r.step for r in live if r.step > step]
        if not newer:
            return
        if step > 0 and any(r.step == step for r in mgr.checkpoints()):
            log.warning("forking %s at step %d: this run resumed from that step, so steps %s "
                        "leave the live lineage (they stay in the store; this run's saves "
                        "replace them)", mgr.uri, step, newer)
            mgr.restore(step, rng=False, strict=False)
            return
        raise AlreadyExists(
            f"{mgr.uri} already holds checkpoints for steps {newer}, newer than step "
            f"{step} where this training starts; its saves would collide. "
            "Resume from the latest one, use a new URI, or delete them "
            "(CheckpointManager.delete)")

    def release_signals(self) -> None:
        """Put back the signal handlers that were there before ``train()`` (main thread).
        Called at the end of ``train()``, also when it raised."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.uninstall()

    def _point_at_best(self, mgr: CheckpointManager, state: Any) -> None:
        """After a restore: ``best_model_checkpoint`` names the best step's URI (the
        ``Trainer`` drops a saved one that is not a local directory)."""
        best = getattr(state, "best_global_step", None)
        if state.best_model_checkpoint is None and best:
            rec = next((r for r in mgr.checkpoints() if r.step == best), None)
            state.best_model_checkpoint = rec.uri if rec is not None else None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """After a preemption signal: have the ``Trainer`` save this step and stop."""
        if self._watch is not None and self._watch.preempted:
            if not control.should_training_stop:
                log.warning("preempted: saving step %d and stopping", state.global_step)
            self.preempted = True
            control.should_save = True
            control.should_training_stop = True

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
        """Wait for every async save to commit; after a preemption, make sure the last step
        is committed (saving it if the signal came after the last step boundary); with
        ``load_best_model_at_end``, load the best checkpoint (:meth:`load_best`) unless the
        ``Trainer`` loaded a local one or :class:`CloudckptTrainer` did; release the signal
        handlers; and after a preemption, exit with status 0 (``exit_on_preemption``).

        Raises:
            SystemExit(0): preempted, the final checkpoint committed, ``exit_on_preemption``.
            The background save's error; as :meth:`save` and :meth:`load_best`.
        """
        watch, self._watch = self._watch, None
        try:
            self.wait()
            if watch is not None and watch.preempted:
                self.preempted = True
                model = kwargs.get("model")
                if self._saved_step != state.global_step and model is not None:
                    self.save(args, state, model=model, optimizer=kwargs.get("optimizer"),
                              lr_scheduler=kwargs.get("lr_scheduler"))
                    self.wait()
                watch.done.set()
            model = kwargs.get("model")
            best = state.best_model_checkpoint
            if getattr(args, "load_best_model_at_end", False) and model is not None \
                    and not self._best_loaded and not (best is not None and os.path.isdir(best)):
                self.load_best(args, state, model)
        finally:
            if watch is not None:
                watch.uninstall()
        if self.preempted and self.exit_on_preemption:
            self.exit_after_preemption(state)

    def exit_after_preemption(self, state: Any) -> None:
        """Log and raise ``SystemExit(0)``: the run was preempted and its last step is
        committed. Called at the end of ``train()``.

        Raises:
            SystemExit: always.
        """
        log.warning("preempted: step %d is committed under %s; exiting with status 0",
                    state.global_step, self._manager.uri if self._manager else self.uri)
        raise SystemExit(0)

    def load_best(self, args: Any, state: Any, model: Any) -> int | None:
        """Wait for pending saves, then load the best checkpoint's weights into ``model``: the
        ``Trainer``'s ``best_global_step`` when committed, else the best by metric; point
        ``state.best_model_checkpoint`` at its URI. Returns its step (``None``: no checkpoint
        reports the metric; the weights are kept). Called at the end of training (by
        :meth:`on_train_end`, or by :class:`CloudckptTrainer` where the ``Trainer`` loads its
        best model), on the training thread.

        Raises:
            CorruptCheckpoint, StorageError: the best checkpoint cannot be read.
            The background save's error.
        """
        self.wait()
        mgr = self.manager(args)
        records = {r.step: r for r in mgr.checkpoints()}
        step = state.best_global_step if state.best_global_step in records else mgr.best()
        self._best_loaded = True
        if step is None:
            log.warning("load_best_model_at_end: no checkpoint under %s reports %r; keeping the "
                        "last weights", mgr.uri, mgr.metric)
            return None
        rec = records[step]
        tree = cloudckpt.load(rec.uri, keys=["objects/model"],
                              storage_options=self._load_options(mgr, rec))
        model.load_state_dict(tree["objects"]["model"])
        state.best_model_checkpoint = rec.uri
        log.info("loaded the best model (step %d, %s=%s) from %s", step, mgr.metric,
                 rec.metrics.get(mgr.metric or ""), rec.uri)
        return step
