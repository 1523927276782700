"""Names the Hugging Face integration shares without importing ``transformers``: where a
checkpoint keeps the ``Trainer``'s state and the model config, and the file names of a stock
``Trainer`` checkpoint directory (``checkpoint-<step>/``), as ``transformers`` 5.x defines them
(``transformers.trainer`` and ``transformers.utils``; a unit test compares them with the
installed ``transformers``). Pure constants; any caller.
"""

from __future__ import annotations

import re

__all__ = ["CHECKPOINT_DIR_RE", "CONFIG_FILE", "CONFIG_KEY", "OPTIMIZER_FILE", "PREFIX_CHECKPOINT_DIR",
           "RNG_FILE", "SCALER_FILE", "SCHEDULER_FILE", "STATE_FILE", "STATE_KEY",
           "WEIGHTS_FILE", "is_remote"]

#: Key under the checkpoint's ``extra`` holding the ``TrainerState`` (``save_to_json``'s dict).
STATE_KEY = "hf_trainer_state"
#: Key under the checkpoint's ``extra`` holding the model's ``config.json`` (a JSON dict), when
#: the model has a ``config`` (a ``PreTrainedModel``).
CONFIG_KEY = "hf_model_config"

#: ``transformers.trainer_utils.PREFIX_CHECKPOINT_DIR``: checkpoints are ``checkpoint-<step>``.
PREFIX_CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_DIR_RE = re.compile(r"^" + PREFIX_CHECKPOINT_DIR + r"-(\d+)$")
#: ``transformers.trainer.TRAINER_STATE_NAME``
STATE_FILE = "trainer_state.json"
#: ``transformers.trainer.OPTIMIZER_NAME`` / ``SCHEDULER_NAME`` / ``SCALER_NAME``
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
SCALER_FILE = "scaler.pt"
#: what ``Trainer._save_rng_state`` writes in a single-process run
RNG_FILE = "rng_state.pth"
#: ``transformers.utils.SAFE_WEIGHTS_NAME`` / ``CONFIG_NAME``
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # two letters or more: not C:\\


def is_remote(path: str) -> bool:
    """Whether ``path`` starts like a URI (``s3://``, ``gs://``, ``file://``, also a malformed
    ``s3:/bucket``) rather than a plain local path, i.e. whether a ``Trainer`` writing to it
    with ``os.makedirs`` would create a local directory named after the scheme (``s3:``)."""
    return bool(_SCHEME_RE.match(str(path)))
