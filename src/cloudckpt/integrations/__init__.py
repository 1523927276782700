"""Framework integrations. Nothing heavy is imported until a name is used:

* ``cloudckpt.integrations.hf`` (a package): :class:`CloudckptCallback` (public callback
  hooks only) and :class:`CloudckptTrainer` (private ``Trainer`` hooks, version-gated) for
  Hugging Face ``transformers`` (needs ``transformers`` and ``accelerate``).
* ``cloudckpt.integrations.lightning`` (a package): :class:`CloudckptIO` (a ``CheckpointIO``
  plugin), ``CloudckptModelCheckpoint`` (``ckpt_path="last"`` on any store; private hooks,
  version-gated), ``load_from_checkpoint`` and ``find_checkpoint`` for PyTorch Lightning
  (needs ``lightning``).
* ``cloudckpt.integrations.mlflow``: :class:`MlflowLogger`, an ``on_commit`` hook that logs
  each committed checkpoint to an MLflow run (needs ``mlflow`` or ``mlflow-skinny``).

``from cloudckpt.integrations import CloudckptIO`` imports only the Lightning module; a missing
framework raises ``ImportError`` at that point, naming the package to install.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudckpt.integrations.hf import CloudckptCallback, CloudckptTrainer
    from cloudckpt.integrations.lightning import CloudckptIO, CloudckptModelCheckpoint
    from cloudckpt.integrations.mlflow import MlflowLogger

__all__ = ["CloudckptCallback", "CloudckptIO", "CloudckptModelCheckpoint", "CloudckptTrainer",
           "MlflowLogger"]

_WHERE = {"CloudckptCallback": ("hf", "transformers accelerate"),
          "CloudckptTrainer": ("hf", "transformers accelerate"),
          "CloudckptIO": ("lightning", "lightning"),
          "CloudckptModelCheckpoint": ("lightning", "lightning"),
          "MlflowLogger": ("mlflow", "mlflow-skinny")}


def __getattr__(name: str) -> Any:
    """Import the integration module that defines ``name`` on first use.

    Raises:
        AttributeError: no such name. ImportError: the framework is not installed.
    """
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, packages = _WHERE[name]
    try:
        mod = importlib.import_module(f"{__name__}.{module}")
    except ImportError as e:
        raise ImportError(f"cloudckpt.integrations.{name} needs `pip install {packages}`: {e}"
                          ) from e
    return getattr(mod, name)
