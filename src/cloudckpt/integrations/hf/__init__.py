"""Hugging Face ``transformers`` integration: checkpoint a ``Trainer`` run to a bucket URI.

* :class:`CloudckptCallback` (a ``TrainerCallback``, module ``callback``): saves model,
  optimizer, LR scheduler, RNG states, the ``TrainerState`` and the model config through a
  :class:`~cloudckpt.CheckpointManager` whenever the ``Trainer`` saves (so ``save_strategy``
  "steps"/"epoch"/"best"/"no" and ``save_steps`` are honoured exactly as the ``Trainer`` decides
  them), applies retention from ``save_total_limit`` / ``metric_for_best_model`` /
  ``greater_is_better`` (the ``Trainer``'s rotation rule: keep the newest and the best, then the
  newest others up to the limit), handles preemption signals (``preemption=True``: stop at the
  next step boundary, save, exit 0), saves in the background (``async_save=True``; all
  committed before ``train()`` returns), and with ``load_best_model_at_end`` loads the best
  checkpoint's weights when training ends. With a plain ``Trainer`` it *mirrors* each local
  checkpoint to the bucket. Public ``TrainerCallback`` hooks only.
* :class:`CloudckptTrainer` (a ``Trainer``, module ``trainer``): installs that callback, writes
  checkpoints only to the bucket (nothing under ``output_dir/checkpoint-*``) and resumes from it:
  ``trainer.train()`` on a fresh process continues from the latest committed checkpoint
  (``global_step``, epoch and data position, optimizer, scheduler, scaler, RNG states, log
  history, best metric, stateful callbacks); ``train(resume_from_checkpoint="best" or a step)``
  forks the run there (lineage: the newer checkpoints stay in the store, outside the live
  run). ``save_model("s3://...")`` writes a ``from_pretrained`` directory.
* :func:`export_pretrained` (module ``pretrained``): a model (and tokenizer/processor) to any
  URI as a directory ``from_pretrained`` loads unchanged.
* :func:`download_checkpoint` (module ``download``, also ``cloudckpt download URI DIR``): a
  checkpoint of the run as a stock ``checkpoint-<step>/`` directory that an unmodified
  ``Trainer`` resumes from (and ``from_pretrained`` loads). Needs no ``transformers``.

Supported transformers: ``>=5.24,<6`` (the ``hf`` extra pins the same range). Why: no public
hook lets a ``Trainer`` skip its local checkpoint write, resume from anything but a local
directory, or load its best model from anywhere but one, so :class:`CloudckptTrainer`
overrides private ``Trainer`` methods: ``_save_checkpoint(model, trial)``,
``_load_from_checkpoint(resume_from_checkpoint, model=None)``,
``_load_optimizer_and_scheduler(checkpoint)``, ``_load_scaler(checkpoint)``,
``_load_rng_state(checkpoint)`` and ``_load_best_model()`` (plus the public ``train`` and
``save_model``), and relies on ``train`` reading ``trainer_state.json`` from the directory it is
given. Private methods change between releases without notice (4.x's ``_save_checkpoint``
took a third ``metrics`` argument; 5.x reorganised the training loop), so the range is what
was tested: 5.24 is the release these overrides were written and tested against (the lowest
and, when this was written, also the newest 5.x release), and ``<6`` because a major release
may change any of them. All overrides live in ``_trainer_hooks``, which on import checks the
installed version against the range and each overridden method's signature, and raises
``UnsupportedTransformers`` (an ``ImportError`` naming the range) rather than misbehave. That
check runs only when :class:`CloudckptTrainer` is first used: :class:`CloudckptCallback`,
:func:`export_pretrained` and :func:`download_checkpoint` need public API only and work with
any ``transformers`` 5.

Layout: one CheckpointManager run under the URI (``step-000000000010/...``); each checkpoint
holds ``objects/model`` (``model.state_dict()``), ``objects/optimizer``,
``objects/lr_scheduler``, ``objects/scaler`` (fp16 only), ``rng``,
``extra/hf_trainer_state`` (the ``TrainerState`` as the JSON-compatible dict ``save_to_json``
writes; rebuilt with ``TrainerState(**d)`` as ``load_from_json`` does) and
``extra/hf_model_config`` (``config.json``'s content, for a ``PreTrainedModel``). No pickle.

Not supported: DeepSpeed and FSDP (sharded state; use ``cloudckpt.dcp``), hyperparameter
search trials, ``push_to_hub`` of checkpoints, and per-rank RNG states in multi-process runs
(only rank 0's are saved; other ranks do not restore RNG states, like a missing
``rng_state_{rank}.pth``). Preemption handling assumes every process gets the signal (as
under ``torchrun`` and SLURM).

Names are imported on first use, so ``download_checkpoint`` does not import ``transformers``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudckpt.integrations.hf._names import CONFIG_KEY, STATE_KEY
    from cloudckpt.integrations.hf._rotation import HFRotation
    from cloudckpt.integrations.hf._state import trainer_state_from_dict, trainer_state_to_dict
    from cloudckpt.integrations.hf.callback import CloudckptCallback
    from cloudckpt.integrations.hf.download import HFCheckpointDir, download_checkpoint
    from cloudckpt.integrations.hf.pretrained import export_pretrained
    from cloudckpt.integrations.hf.trainer import CloudckptTrainer

__all__ = ["CONFIG_KEY", "STATE_KEY", "CloudckptCallback", "CloudckptTrainer", "HFCheckpointDir",
           "HFRotation", "download_checkpoint", "export_pretrained", "trainer_state_from_dict",
           "trainer_state_to_dict"]

_WHERE = {"CONFIG_KEY": "_names", "STATE_KEY": "_names", "HFRotation": "_rotation",
          "trainer_state_from_dict": "_state", "trainer_state_to_dict": "_state",
          "CloudckptCallback": "callback", "CloudckptTrainer": "trainer",
          "HFCheckpointDir": "download", "download_checkpoint": "download",
          "export_pretrained": "pretrained"}


def __getattr__(name: str) -> Any:
    """Import the module defining ``name`` on first use (``CloudckptTrainer`` runs the
    transformers check then).

    Raises:
        AttributeError: no such name.
        ImportError: ``transformers`` is missing; UnsupportedTransformers (an ``ImportError``)
            for ``CloudckptTrainer``: see the module docstring.
    """
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
