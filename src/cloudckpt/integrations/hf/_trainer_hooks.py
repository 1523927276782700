"""Every override of a private ``transformers.Trainer`` method lives here, behind a version gate.

:class:`CloudckptTrainer` keeps its checkpoints out of ``output_dir`` and resumes from a bucket.
No public ``TrainerCallback`` hook can do that (callbacks run after the ``Trainer`` has written
its local checkpoint and cannot feed state into a resume), so :class:`TrainerHooks` overrides
these ``Trainer`` methods (signatures as in transformers 5.24):

* ``_save_checkpoint(self, model, trial)``: called when the ``Trainer`` decides to save;
  replaced outright (commits to the URI, writes nothing under ``output_dir``);
* ``_load_from_checkpoint(self, resume_from_checkpoint, model=None)``: model weights, called by
  ``train`` before ``accelerator.prepare``;
* ``_load_optimizer_and_scheduler(self, checkpoint)`` and ``_load_scaler(self, checkpoint)``:
  called by the training loop once the optimizer and scaler exist;
* ``_load_rng_state(self, checkpoint)``: called from the epoch loop where the data position is
  restored;
* ``_load_best_model(self)``: called at the end of training with ``load_best_model_at_end``
  when ``state.best_model_checkpoint`` is set (ours is the best checkpoint's URI, which the
  ``Trainer`` would look for as a local directory and warn that it cannot find);
* and the public ``train(self, resume_from_checkpoint=None, trial=None,
  ignore_keys_for_eval=None)``, which ``CloudckptTrainer`` overrides.

They also rely on private behaviour no signature shows: ``train`` reads
``<checkpoint>/trainer_state.json`` (``transformers.trainer.TRAINER_STATE_NAME``) from the local
directory it is given and then calls the loaders above with that same path; and
``_save_checkpoint`` must redo the ``Trainer``'s bookkeeping of ``ExportableState`` callbacks in
``TrainerState.stateful_callbacks``. Private methods change between releases without notice
(4.x's ``_save_checkpoint`` took a third ``metrics`` argument), so this module refuses to load
unless

1. the installed transformers version is in :data:`SUPPORTED_TRANSFORMERS` (``>=5.24,<6``: 5.24
   is the release these overrides were written and tested against; a new major version may
   change any private method),
2. each method in :data:`OVERRIDDEN` exists on ``Trainer`` with exactly the expected parameters
   (names, kinds, defaults; annotations are ignored), and
3. ``TRAINER_STATE_NAME`` is still ``"trainer_state.json"``,

raising :class:`UnsupportedTransformers` (an ``ImportError``) that names the range. Check 2 runs
again when a :class:`TrainerHooks` is constructed, in case a library patched ``Trainer`` since.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version
from transformers import Trainer
from transformers.trainer_callback import ExportableState

from cloudckpt.engine.reader import load
from cloudckpt.errors import InvalidArgument, UnsupportedTransformers
from cloudckpt.manager.state import restore_rng
from cloudckpt.storage import Store

if TYPE_CHECKING:
    from cloudckpt.integrations.hf.callback import CloudckptCallback

__all__ = ["OVERRIDDEN", "SUPPORTED_TRANSFORMERS", "TrainerHooks", "UnsupportedTransformers",
           "check_hooks", "check_state_file", "check_transformers", "check_version",
           "installed_version", "signature_shape"]

log = logging.getLogger("cloudckpt.integrations.hf")

#: The transformers versions :class:`TrainerHooks` supports (as in pyproject's ``hf`` extra).
SUPPORTED_TRANSFORMERS = ">=5.24,<6"

#: ``Trainer`` method -> the parameters (:func:`signature_shape`) our override assumes.
OVERRIDDEN: dict[str, str] = {
    "_save_checkpoint": "(self, model, trial)",
    "_load_from_checkpoint": "(self, resume_from_checkpoint, model=None)",
    "_load_optimizer_and_scheduler": "(self, checkpoint)",
    "_load_scaler": "(self, checkpoint)",
    "_load_rng_state": "(self, checkpoint)",
    "_load_best_model": "(self)",
    "train": "(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None)",
}

#: The file ``Trainer.train`` reads the ``TrainerState`` from, in the checkpoint directory it is
#: given (``transformers.trainer.TRAINER_STATE_NAME``).
STATE_FILE = "trainer_state.json"

_ADVICE = (f"Install transformers{SUPPORTED_TRANSFORMERS} (`pip install "
           f"'transformers{SUPPORTED_TRANSFORMERS}'`), or use CloudckptCallback (public "
           "TrainerCallback hooks only) with a plain Trainer.")


def signature_shape(func: Callable[..., Any]) -> str:
    """``func``'s parameters as written, without annotations: ``"(self, model=None, *a, **k)"``.

    Raises:
        TypeError, ValueError: ``func`` has no signature ``inspect`` can read.
    """
    sig = inspect.signature(func)
    bare = [p.replace(annotation=p.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=bare, return_annotation=sig.empty))


def installed_version() -> str:
    """``transformers.__version__``, looked up on each call (``transformers`` may replace its
    lazily loaded module in ``sys.modules`` after this module bound the name)."""
    return str(importlib.import_module("transformers").__version__)


def check_version(version: str) -> None:
    """Check ``version`` (a transformers ``__version__``) against
    :data:`SUPPORTED_TRANSFORMERS`; pre-releases inside the range count as inside.

    Raises:
        UnsupportedTransformers: outside the range, or not a version at all.
    """
    try:
        inside = SpecifierSet(SUPPORTED_TRANSFORMERS).contains(Version(version), prereleases=True)
    except InvalidVersion:
        inside = False
    if not inside:
        raise UnsupportedTransformers(
            f"cloudckpt's CloudckptTrainer supports transformers{SUPPORTED_TRANSFORMERS}, found "
            f"transformers {version}: it overrides private Trainer methods "
            f"({', '.join(m for m in OVERRIDDEN if m.startswith('_'))}) whose signatures and "
            f"call order are only known for that range. {_ADVICE}")


def check_hooks(trainer_cls: type, version: str | None = None) -> None:
    """Check that ``trainer_cls`` has every method of :data:`OVERRIDDEN` with the expected
    parameters. ``version`` only labels the message (default: the installed one).

    Raises:
        UnsupportedTransformers: one or more are missing or differ (all are listed).
    """
    problems: list[str] = []
    for name, expected in OVERRIDDEN.items():
        method = getattr(trainer_cls, name, None)
        if not callable(method):
            problems.append(f"{trainer_cls.__name__}.{name} is "
                            + ("missing" if method is None else "not a method"))
            continue
        try:
            actual = signature_shape(method)
        except (TypeError, ValueError) as e:
            problems.append(f"{trainer_cls.__name__}.{name} has no readable signature ({e})")
            continue
        if actual != expected:
            problems.append(f"{trainer_cls.__name__}.{name}{actual} differs from the expected "
                            f"{name}{expected}")
    if problems:
        found = version if version is not None else installed_version()
        raise UnsupportedTransformers(
            f"CloudckptTrainer cannot hook into this transformers {found}: "
            + "; ".join(problems) + f". Supported: transformers{SUPPORTED_TRANSFORMERS}. "
            + _ADVICE)


def check_state_file(trainer_module: Any) -> None:
    """Check that ``trainer_module`` (``transformers.trainer``) still names :data:`STATE_FILE`
    as the file ``Trainer.train`` reads from a checkpoint directory.

    Raises:
        UnsupportedTransformers: it names another file, or none.
    """
    name = getattr(trainer_module, "TRAINER_STATE_NAME", None)
    if name != STATE_FILE:
        raise UnsupportedTransformers(
            f"CloudckptTrainer cannot resume with this transformers {installed_version()}: "
            f"Trainer.train reads its state from {name!r}, not {STATE_FILE!r}. "
            f"Supported: transformers{SUPPORTED_TRANSFORMERS}. {_ADVICE}")


def check_transformers() -> None:
    """All checks on the installed ``transformers``; run when this module is imported.

    Raises:
        UnsupportedTransformers: see :func:`check_version`, :func:`check_hooks` and
            :func:`check_state_file`.
    """
    check_version(installed_version())
    check_hooks(Trainer)
    check_state_file(importlib.import_module(Trainer.__module__))


check_transformers()


@dataclass
class _Resume:
    """The cloud checkpoint a ``CloudckptTrainer.train`` call resumes from: the object states
    the manager's restore read (``trees``: ``model``, ``optimizer``, ``lr_scheduler``,
    ``scaler``; each handed out once, then dropped to free memory), and where to read more
    (``store``: its RNG states, or a state asked for again)."""

    local_dir: str
    uri: str
    store: Store
    trees: dict[str, Any]

    def take(self, name: str) -> Any:
        """The saved state of object ``name``; ``None`` if it was not saved."""
        if name in self.trees:
            return self.trees.pop(name)
        return self.load(f"objects/{name}")  # asked again (auto_find_batch_size retries)

    def load(self, key: str) -> Any:
        """The sub-tree at ``key`` (``"rng"``); ``None`` if it was not saved."""
        try:
            tree = load(self.store, keys=[key])
        except InvalidArgument:  # the key is not in this checkpoint
            return None
        for part in key.split("/"):
            tree = tree[part]
        return tree


class TrainerHooks(Trainer):  # type: ignore[misc, unused-ignore]
    """The private ``Trainer`` overrides behind :class:`CloudckptTrainer`; each falls back to
    the ``Trainer``'s own for a checkpoint that is not the cloud one being resumed. The
    subclass sets ``cloudckpt`` (its :class:`CloudckptCallback`) in its constructor.

    Raises (constructor): UnsupportedTransformers, see the module docstring.
    """

    cloudckpt: CloudckptCallback
    _cloudckpt_resume: _Resume | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        check_hooks(Trainer)
        super().__init__(*args, **kwargs)

    # -- saving ---------------------------------------------------------------------------
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Replaces the ``Trainer``'s local checkpoint write: commits the step to the URI,
        with ``state.best_model_checkpoint`` set to the best step's URI first (as the
        ``Trainer`` sets it to the best local directory). Called by the ``Trainer`` when it
        decides to save.

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
        best = self.state.best_global_step
        if best and best == self.state.global_step \
                and self.args.save_strategy in ("steps", "epoch", "best"):
            mgr = self.cloudckpt.manager(self.args)
            self.state.best_model_checkpoint = mgr.context.step_store(best).uri
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

    def _load_best_model(self) -> None:
        """Load the best checkpoint's weights from the URI (after every pending save has
        committed); a local directory keeps the ``Trainer``'s own loader. Called by the
        ``Trainer`` at the end of training with ``load_best_model_at_end``.

        Raises:
            As :meth:`CloudckptCallback.load_best`.
        """
        best = self.state.best_model_checkpoint
        if best is not None and os.path.isdir(best):
            super()._load_best_model()
            return
        self.cloudckpt.load_best(self.args, self.state, self.model)

    # -- resuming -------------------------------------------------------------------------
    def _train_from_cloud(self, step: int, resume: tuple[str, Store, dict[str, Any]],
                          hf_state: dict[str, Any], *, trial: Any,
                          ignore_keys_for_eval: list[str] | None) -> Any:
        """``Trainer.train`` resuming from the checkpoint ``resume`` (its URI, store and the
        object states already read): its ``TrainerState`` is written where ``train`` reads it
        (``<tmp>/checkpoint-<step>/trainer_state.json``), and the loaders below serve the rest
        when given that directory."""
        with tempfile.TemporaryDirectory(prefix="cloudckpt-hf-") as tmp:
            local = os.path.join(tmp, f"checkpoint-{step}")
            os.mkdir(local)
            with open(os.path.join(local, STATE_FILE), "w", encoding="utf-8") as f:
                f.write(json.dumps(hf_state, indent=2, sort_keys=True) + "\n")
            self._cloudckpt_resume = _Resume(local, *resume)
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
            InvalidArgument: the checkpoint holds no model, or there is no model.
            RuntimeError: the weights do not fit the model (``load_state_dict``).
        """
        r = self._ours(resume_from_checkpoint)
        if r is None:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        target = model if model is not None else self.model
        if target is None:
            raise InvalidArgument("CloudckptTrainer: no model to load the checkpoint into")
        weights = r.take("model")
        if weights is None:
            raise InvalidArgument(f"{r.uri} holds no model weights")
        target.load_state_dict(weights)
        log.info("loaded model weights from %s", r.uri)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Load optimizer and LR scheduler states (when both were saved, as the ``Trainer``
        does). Called by the ``Trainer`` once they exist."""
        r = self._ours(checkpoint)
        if r is None:
            super()._load_optimizer_and_scheduler(checkpoint)
            return
        opt, sched = r.take("optimizer"), r.take("lr_scheduler")
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
        st = r.take("scaler")
        if scaler is not None and st is not None:
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
