"""Every use of a private Lightning API lives here, behind a version gate.

No public Lightning API can do these two things:

* ``ckpt_path="last"``: ``Trainer.fit`` resolves it before any callback or plugin runs, by
  calling ``ModelCheckpoint._find_last_checkpoints(self, trainer) -> set[str]`` on each
  checkpoint callback and keeping the candidate ``p`` with the newest
  ``get_filesystem(p).modified(p)``. The stock method lists ``dirpath`` with fsspec and
  returns the names without their scheme (``bucket/run/last.ckpt``), which then resolve
  against the local disk: on an object store nothing is found and training starts from
  scratch (Lightning issue #18261). :class:`CloudckptModelCheckpoint` overrides it to return,
  with their scheme, the ``manifest.json`` of each committed ``last*.ckpt`` cloudckpt
  checkpoint (a manifest is an object, so ``exists`` and ``modified`` work on every store;
  :class:`~.io.CloudckptIO` loads the checkpoint that holds it).
* ``load_from_checkpoint``: ``LightningModule.load_from_checkpoint`` reads the path with
  ``torch.load`` (a bare ``EOFError`` on a cloudckpt checkpoint). The part after reading, which
  builds the module from the saved hyperparameters (``save_hyperparameters`` names, the
  trusted-instantiator allowlist, ``strict_loading``, ``configure_model``,
  ``on_load_checkpoint``, ``load_state_dict``), is the private
  ``lightning.pytorch.core.saving._load_state(cls, checkpoint, strict=None, **kwargs)``;
  :func:`load_state` calls it so that ours behaves exactly as Lightning's.

Private functions change between releases without notice, so :func:`check_lightning` refuses
(:class:`~cloudckpt.errors.UnsupportedFramework`, an ``ImportError``) unless the installed
``lightning`` is in :data:`SUPPORTED_LIGHTNING` (``>=2.6,<3``, as pyproject's ``lightning``
extra: 2.6 is the release this was written and tested against) and each entry of
:data:`PRIVATE` has exactly the parameters assumed (names, kinds, defaults). It runs when a
:class:`CloudckptModelCheckpoint` is constructed and when ``load_from_checkpoint`` is called;
:class:`~.io.CloudckptIO` uses no private API and needs no gate. The standalone
``pytorch_lightning`` package is a separate copy of these classes: use ``lightning``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Mapping
from typing import Any

import lightning
from lightning.pytorch.callbacks import ModelCheckpoint
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from cloudckpt.errors import UnsupportedFramework

__all__ = ["PRIVATE", "SUPPORTED_LIGHTNING", "CloudckptModelCheckpoint", "check_lightning",
           "check_private", "check_version", "load_state", "signature_shape"]

log = logging.getLogger("cloudckpt.integrations.lightning")

#: The lightning versions this module supports (as in pyproject's ``lightning`` extra).
SUPPORTED_LIGHTNING = ">=2.6,<3"

#: ``module:qualified name`` of each private API used -> the parameters it must have.
PRIVATE: dict[str, str] = {
    "lightning.pytorch.callbacks.model_checkpoint:ModelCheckpoint._find_last_checkpoints":
        "(self, trainer)",
    "lightning.pytorch.core.saving:_load_state": "(cls, checkpoint, strict=None, **cls_kwargs_new)",
}


def signature_shape(fn: Any) -> str:
    """``fn``'s parameters as ``(a, b=1, *args, **kw)``: names, kinds and defaults, without
    annotations. Any caller."""
    parts: list[str] = []
    for p in inspect.signature(fn).parameters.values():
        prefix = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        default = "" if p.default is p.empty else f"={p.default!r}"
        parts.append(f"{prefix}{p.name}{default}")
    return f"({', '.join(parts)})"


def check_version(version: str) -> None:
    """Raise unless ``version`` is in :data:`SUPPORTED_LIGHTNING` (a pre-release counts when
    it sorts inside the range: ``2.7.0.dev0`` does, ``2.6.0rc1`` and ``3.0.0.dev0`` do not).

    Raises:
        UnsupportedFramework: out of range, or not a version.
    """
    try:
        ok = SpecifierSet(SUPPORTED_LIGHTNING).contains(Version(version), prereleases=True)
    except InvalidVersion:
        ok = False
    if not ok:
        raise UnsupportedFramework(
            f"cloudckpt.integrations.lightning supports lightning{SUPPORTED_LIGHTNING}, not "
            f"{version!r}: pip install 'lightning{SUPPORTED_LIGHTNING}' (or "
            "'cloudckpt[lightning]')")


def _resolve(target: str) -> Any:
    module, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def check_private() -> None:
    """Raise unless every entry of :data:`PRIVATE` exists with the parameters assumed.

    Raises:
        UnsupportedFramework: one is missing or changed (named).
    """
    for target, shape in PRIVATE.items():
        try:
            found = signature_shape(_resolve(target))
        except (ImportError, AttributeError, TypeError, ValueError) as e:
            raise UnsupportedFramework(
                f"lightning {lightning.__version__}: {target} is gone ({type(e).__name__}); "
                f"cloudckpt.integrations.lightning supports lightning{SUPPORTED_LIGHTNING}") from e
        if found != shape:
            raise UnsupportedFramework(
                f"lightning {lightning.__version__}: {target}{found} is not the {shape} "
                f"cloudckpt.integrations.lightning relies on (lightning{SUPPORTED_LIGHTNING})")


def check_lightning() -> None:
    """:func:`check_version` of the installed lightning, then :func:`check_private`. Any
    caller; cheap (no I/O).

    Raises:
        UnsupportedFramework: see those.
    """
    check_version(str(importlib.import_module("lightning").__version__))
    check_private()


def load_state(cls: type, checkpoint: dict[str, Any], strict: bool | None,
               kwargs: Mapping[str, Any]) -> Any:
    """Build ``cls`` (a ``LightningModule`` or ``LightningDataModule`` class) from a loaded
    checkpoint dict exactly as ``cls.load_from_checkpoint`` does after reading its file.
    Called by :func:`~.resume.load_from_checkpoint` after :func:`check_lightning`.

    Raises:
        Whatever ``cls.__init__``, its hooks or ``load_state_dict`` raise (e.g. RuntimeError
        for missing keys with ``strict=True``); ValueError for an untrusted instantiator.
    """
    fn = _resolve("lightning.pytorch.core.saving:_load_state")
    if issubclass(cls, _resolve("lightning.pytorch:LightningDataModule")):
        return fn(cls, checkpoint, **kwargs)
    return fn(cls, checkpoint, strict=strict, **kwargs)


class CloudckptModelCheckpoint(ModelCheckpoint):  # type: ignore[misc, unused-ignore]
    """``ModelCheckpoint`` with which ``trainer.fit(model, ckpt_path="last")`` finds the
    newest ``last*.ckpt`` cloudckpt checkpoint in ``dirpath`` on any store (see the module
    docstring). All arguments as ``ModelCheckpoint``'s, plus ``storage_options`` for listing
    ``dirpath`` (default: those of the trainer's :class:`~.io.CloudckptIO`). Its state in a
    checkpoint is keyed like a plain ``ModelCheckpoint``'s, so either resumes the other's run.

    Lightning itself then checks the candidates through fsspec without storage options: for a
    custom endpoint set ``fsspec.config.conf`` or the ``AWS_*`` variables, as any
    ``ModelCheckpoint`` on that store needs. Give ``dirpath``: without it (the logger's
    directory) the stock lookup is used.

    Raises (constructor): UnsupportedFramework (see :func:`check_lightning`); whatever
    ``ModelCheckpoint`` raises for its arguments.
    """

    def __init__(self, *args: Any, storage_options: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        check_lightning()
        super().__init__(*args, **kwargs)
        self.storage_options = dict(storage_options) if storage_options is not None else None

    @property
    def state_key(self) -> str:
        key = str(super().state_key)
        own = type(self).__qualname__
        return "ModelCheckpoint" + key[len(own):] if key.startswith(own) else key

    def _find_last_checkpoints(self, trainer: Any) -> set[str]:
        """Manifest URIs of the committed ``last*.ckpt`` checkpoints in ``dirpath``, for
        Lightning's ``ckpt_path="last"`` (it picks the newest). Called by Lightning's
        checkpoint connector on every rank before training starts.

        Raises:
            StorageError and subclasses: ``dirpath`` cannot be listed.
        """
        if not self.dirpath:
            return set(super()._find_last_checkpoints(trainer))
        from cloudckpt.integrations.lightning.io import CloudckptIO
        from cloudckpt.integrations.lightning.listing import last_manifests

        opts = self.storage_options
        if opts is None:
            io = getattr(getattr(trainer, "strategy", None), "checkpoint_io", None)
            opts = io.storage_options if isinstance(io, CloudckptIO) else {}
        found = last_manifests(str(self.dirpath), opts, name=self.CHECKPOINT_NAME_LAST,
                               extension=self.FILE_EXTENSION)
        log.info("ckpt_path='last': %d committed candidate(s) in %s", len(found), self.dirpath)
        return {uri for uri, _ in found}
