"""Hugging Face ``transformers`` integration: checkpoint a ``Trainer`` run to a bucket URI.

Two pieces:

* :class:`CloudckptCallback` (a ``TrainerCallback``, module ``callback``): saves model,
  optimizer, LR scheduler, RNG states and the ``TrainerState`` through a
  :class:`~cloudckpt.CheckpointManager` whenever the ``Trainer`` saves (so ``save_strategy``
  "steps"/"epoch"/"best"/"no" and ``save_steps`` are honoured exactly as the ``Trainer`` decides
  them), applies retention from ``save_total_limit`` / ``metric_for_best_model`` /
  ``greater_is_better`` (the ``Trainer``'s rotation rule: keep the newest and the best, then the
  newest others up to the limit), and with ``load_best_model_at_end`` loads the best
  checkpoint's weights into the model when training ends. With a plain ``Trainer`` it *mirrors*
  each local checkpoint to the bucket. Public ``TrainerCallback`` hooks only.
* :class:`CloudckptTrainer` (a ``Trainer``, module ``trainer``): installs that callback, writes
  checkpoints only to the bucket (nothing under ``output_dir/checkpoint-*``) and resumes from it:
  ``trainer.train()`` on a fresh process continues from the latest committed checkpoint
  (``global_step``, epoch and data position, optimizer, scheduler, scaler, RNG states, log
  history, best metric, stateful callbacks).

Supported transformers: ``>=5.24,<6``. Why: no public hook lets a ``Trainer`` skip its local
checkpoint write or resume from anything but a local directory, so :class:`CloudckptTrainer`
overrides private ``Trainer`` methods: ``_save_checkpoint(model, trial)``,
``_load_from_checkpoint(resume_from_checkpoint, model=None)``,
``_load_optimizer_and_scheduler(checkpoint)``, ``_load_scaler(checkpoint)`` and
``_load_rng_state(checkpoint)`` (plus the public ``train``), and relies on ``train`` reading
``trainer_state.json`` from the directory it is given. Those are private, change between
releases without notice, and are known to match only for the range (5.24 is the release they
were written and tested against). They all live in ``_trainer_hooks``, which on import checks
the installed version against the range and each overridden method's signature, and raises
``UnsupportedTransformers`` (an ``ImportError`` naming the range) rather than misbehave. That
check runs only when :class:`CloudckptTrainer` is first used: :class:`CloudckptCallback` and
the helpers below need public API only and import with any ``transformers``.

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

from typing import TYPE_CHECKING, Any

from cloudckpt.integrations.hf._rotation import HFRotation
from cloudckpt.integrations.hf._state import STATE_KEY, trainer_state_from_dict, trainer_state_to_dict
from cloudckpt.integrations.hf.callback import CloudckptCallback

if TYPE_CHECKING:
    from cloudckpt.integrations.hf.trainer import CloudckptTrainer

__all__ = ["STATE_KEY", "CloudckptCallback", "CloudckptTrainer", "HFRotation",
           "trainer_state_from_dict", "trainer_state_to_dict"]


def __getattr__(name: str) -> Any:
    """Import :class:`CloudckptTrainer` (and run its transformers check) on first use.

    Raises:
        AttributeError: no such name.
        UnsupportedTransformers (an ``ImportError``): see the module docstring.
    """
    if name == "CloudckptTrainer":
        from cloudckpt.integrations.hf.trainer import CloudckptTrainer

        return CloudckptTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
