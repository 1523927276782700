"""Hugging Face ``transformers`` integration: checkpoint a ``Trainer`` run to a bucket URI.

Two pieces:

* :class:`CloudckptCallback` (a ``TrainerCallback``): saves model, optimizer, LR scheduler,
  RNG states and the ``TrainerState`` through a :class:`~cloudckpt.CheckpointManager` whenever
  the ``Trainer`` saves (so ``save_strategy`` "steps"/"epoch"/"best"/"no" and ``save_steps``
  are honoured exactly as the ``Trainer`` decides them), applies retention from
  ``save_total_limit`` / ``metric_for_best_model`` / ``greater_is_better`` (the ``Trainer``'s
  rotation rule: keep the newest and the best, then the newest others up to the limit), and
  with ``load_best_model_at_end`` loads the best checkpoint's weights into the model when
  training ends. With a plain ``Trainer`` it *mirrors* each local checkpoint to the bucket.
* :class:`CloudckptTrainer` (a ``Trainer``): installs that callback, writes checkpoints only to
  the bucket (nothing under ``output_dir/checkpoint-*``) and resumes from it:
  ``trainer.train()`` on a fresh process continues from the latest committed checkpoint
  (``global_step``, epoch and data position, optimizer, scheduler, scaler, RNG states, log
  history, best metric, stateful callbacks).

Layout: one CheckpointManager run under the URI (``step-000000000010/...``); each checkpoint
holds ``objects/model`` (``model.state_dict()``), ``objects/optimizer``,
``objects/lr_scheduler``, ``objects/scaler`` (fp16 only), ``rng`` and
``extra/hf_trainer_state`` (the ``TrainerState`` as the JSON-compatible dict ``save_to_json``
writes; rebuilt with ``TrainerState(**d)`` as ``load_from_json`` does). No pickle.

Not supported: DeepSpeed and FSDP (sharded state; use ``cloudckpt.dcp``), hyperparameter
search trials, ``push_to_hub`` of checkpoints, and per-rank RNG states in multi-process runs
(only rank 0's are saved; other ranks do not restore RNG states, like a missing
``rng_state_{rank}.pth``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from transformers import Trainer, TrainerCallback, TrainerState
from transformers.trainer_callback import ExportableState

import cloudckpt
from cloudckpt.engine.writer import SaveInfo
from cloudckpt.errors import AlreadyExists, InvalidArgument, NotFound, UnsupportedValue
from cloudckpt.manager import CheckpointManager, CheckpointRecord, CheckpointSummary
from cloudckpt.manager.retention import best_step
from cloudckpt.manager.state import restore_rng

__all__ = ["STATE_KEY", "CloudckptCallback", "CloudckptTrainer", "HFRotation",
           "trainer_state_from_dict", "trainer_state_to_dict"]

log = logging.getLogger("cloudckpt.integrations.hf")

#: Key under the checkpoint's ``extra`` holding the ``TrainerState``.
STATE_KEY = "hf_trainer_state"


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


def _metric_name(args: Any) -> str | None:
    name = getattr(args, "metric_for_best_model", None)
    if not name:
        return None
    return str(name) if str(name).startswith("eval_") else f"eval_{name}"


def _numeric(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[str(k)] = float(v)
    return out


@dataclass(frozen=True)
class HFRotation:
    """Retention with the ``Trainer``'s ``save_total_limit`` rule: the newest checkpoint and
    the best one (by ``metric``/``mode``) are protected; the newest others are kept until
    ``limit`` checkpoints remain (more only when the protected ones alone exceed it)."""

    limit: int
    metric: str | None = None
    mode: str = "min"

    def keep(self, ckpts: Sequence[CheckpointSummary], now: float) -> set[int]:
        if not ckpts:
            return set()
        steps = sorted(c.step for c in ckpts)
        protected = {steps[-1]}
        best = best_step(ckpts, self.metric, self.mode)
        if best is not None:
            protected.add(best)
        room = max(self.limit, len(protected)) - len(protected)
        others = [s for s in steps if s not in protected]
        return protected | set(others[len(others) - room:] if room > 0 else [])


class CloudckptCallback(TrainerCallback):  # type: ignore[misc, unused-ignore]
    """Save (and at the end, load the best) ``Trainer`` checkpoints through cloudckpt.

    ``uri``: the run root (``s3://bucket/run``, ``gs://...``, a local path...).
    ``storage_options``: fsspec options for the store. ``compression``: as for
    :func:`cloudckpt.save`. ``manager_options``: extra :class:`~cloudckpt.CheckpointManager`
    arguments (``archive=``, ``keep_every=``, ``retention=`` to replace the rotation rule...).
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
            metric = _metric_name(args)
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
        records = {r.step: r for r in mgr.checkpoints()}
        if step == "latest":
            return records[max(records)] if records else None
        if step == "best":
            best = mgr.best()
            return records[best] if best is not None else None
        if isinstance(step, int) and not isinstance(step, bool):
            if step not in records:
                raise NotFound(f"no committed checkpoint for step {step} under {mgr.uri}")
            return records[step]
        raise InvalidArgument(f"step must be 'latest', 'best' or an int, not {step!r}")

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
        self._eval = (int(state.global_step), _numeric(metrics))

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


@dataclass
class _Resume:
    """The cloud checkpoint a ``CloudckptTrainer.train`` call resumes from."""

    local_dir: str
    uri: str
    storage_options: Any

    def load(self, key: str) -> Any:
        """The sub-tree at ``key`` (``"objects/optimizer"``); ``None`` if it was not saved."""
        try:
            tree = cloudckpt.load(self.uri, keys=[key], storage_options=self.storage_options)
        except InvalidArgument:  # the key is not in this checkpoint
            return None
        for part in key.split("/"):
            tree = tree[part]
        return tree


class CloudckptTrainer(Trainer):  # type: ignore[misc, unused-ignore]
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
        self._cloudckpt_resume: _Resume | None = None

    # -- saving ---------------------------------------------------------------------------
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Replaces the ``Trainer``'s local checkpoint write: commits the step to the URI.
        Called by the ``Trainer`` when it decides to save.

        Raises:
            InvalidArgument: inside a hyperparameter-search trial (not supported).
            See :meth:`CloudckptCallback.save`.
        """
        if trial is not None:
            raise InvalidArgument("CloudckptTrainer does not support hyperparameter search trials")
        if self.hp_search_backend is None:
            self.store_flos()
        if not self.args.should_save:
            return
        saved = cast(dict[str, Any], self.state.stateful_callbacks)  # a dict at runtime
        for cb in [c for c in [*self.callback_handler.callbacks, self.control]
                   if isinstance(c, ExportableState)]:  # as Trainer._save_checkpoint does
            name = cb.__class__.__name__
            if isinstance(saved.get(name), list):
                saved[name].append(cb.state())
            else:
                saved[name] = cb.state()
        self.cloudckpt.save(self.args, self.state, model=self.model, optimizer=self.optimizer,
                            lr_scheduler=self.lr_scheduler,
                            scaler=getattr(self.accelerator, "scaler", None))

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
        with tempfile.TemporaryDirectory(prefix="cloudckpt-hf-") as tmp:
            local = os.path.join(tmp, f"checkpoint-{rec.step}")
            os.mkdir(local)
            with open(os.path.join(local, "trainer_state.json"), "w", encoding="utf-8") as f:
                f.write(json.dumps(hf_state, indent=2, sort_keys=True) + "\n")
            self._cloudckpt_resume = _Resume(local, rec.uri, opts)
            try:
                return super().train(resume_from_checkpoint=local, trial=trial,
                                     ignore_keys_for_eval=ignore_keys_for_eval)
            finally:
                self._cloudckpt_resume = None

    def _ours(self, checkpoint: Any) -> _Resume | None:
        r = self._cloudckpt_resume
        return r if r is not None and checkpoint == r.local_dir else None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Load the model weights of the checkpoint being resumed. Called by ``Trainer.train``.

        Raises:
            RuntimeError: the weights do not fit the model (``load_state_dict``).
        """
        r = self._ours(resume_from_checkpoint)
        if r is None:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        target = model if model is not None else self.model
        if target is None:
            raise InvalidArgument("CloudckptTrainer: no model to load the checkpoint into")
        target.load_state_dict(r.load("objects/model"))
        log.info("loaded model weights from %s", r.uri)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Load optimizer and LR scheduler states (when both were saved, as the ``Trainer``
        does). Called by the ``Trainer`` once they exist."""
        r = self._ours(checkpoint)
        if r is None:
            super()._load_optimizer_and_scheduler(checkpoint)
            return
        opt, sched = r.load("objects/optimizer"), r.load("objects/lr_scheduler")
        if opt is not None and sched is not None \
                and self.optimizer is not None and self.lr_scheduler is not None:
            self.optimizer.load_state_dict(opt)
            self.lr_scheduler.load_state_dict(sched)

    def _load_scaler(self, checkpoint: str | None) -> None:
        """Load the gradient scaler state (fp16). Called by the ``Trainer``."""
        r = self._ours(checkpoint)
        if r is None:
            super()._load_scaler(checkpoint)
            return
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:
            st = r.load("objects/scaler")
            if st is not None:
                scaler.load_state_dict(st)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        """Restore the Python, NumPy, torch (and CUDA) RNG states at the point where the
        ``Trainer`` does. Called by the ``Trainer``."""
        r = self._ours(checkpoint)
        if r is None:
            super()._load_rng_state(checkpoint)
            return
        if self.args.world_size > 1 and self.args.process_index != 0:
            log.info("RNG states are saved for process 0 only; process %d keeps its own",
                     self.args.process_index)
            return
        rng = r.load("rng")
        if rng:
            restore_rng(rng)
