"""MLflow: log every committed checkpoint to an MLflow run (needs ``mlflow`` or
``mlflow-skinny``)::

    import mlflow
    from cloudckpt import CheckpointManager, CommitOptions
    from cloudckpt.integrations.mlflow import MlflowLogger

    with mlflow.start_run():
        mgr = CheckpointManager("s3://bucket/runs/exp1",
                                commit_options=CommitOptions(on_commit=MlflowLogger()))
        ...  # mgr.save(...) as usual, async saves included

For each commit, at the checkpoint's step: the metrics ``checkpoint/raw_bytes``,
``checkpoint/stored_bytes``, ``checkpoint/save_seconds`` (and ``checkpoint/verify_seconds``
when verified); the tags ``cloudckpt.checkpoint_uri`` and ``cloudckpt.checkpoint_step`` (the
newest checkpoint); and a small JSON artifact ``cloudckpt/checkpoints/step-<12 digits>.json``
with the whole :class:`~cloudckpt.CommitRecord` (URI, save id, sizes, times, metrics), so the
run lists every checkpoint it wrote.

Which run: the one given as ``run_id``, else the run active (on the creating thread) when the
logger is created. MLflow's active run is per thread and async saves commit on a background
thread, so the run is captured up front and written through an ``MlflowClient`` by id; a
logger created outside any run looks for the active run of the thread that commits, and with
none it logs one WARNING and skips (it never starts a run of its own).

Who calls what: the manager calls the logger (``on_commit``) on the thread that committed;
an exception it raises is logged by the manager, never raised into the save.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from cloudckpt import CommitRecord

__all__ = ["MlflowLogger"]

log = logging.getLogger("cloudckpt.integrations")


class MlflowLogger:
    """An ``on_commit`` hook (:class:`~cloudckpt.CommitOptions`) that logs each committed
    checkpoint's URI, step and sizes to an MLflow run (see the module docstring).
    ``tracking_uri``: default, the one in effect when the logger is created. ``artifacts``:
    also write the per-checkpoint JSON record. Thread-safe.

    Raises (when called): MLflow's errors (the manager logs them).
    """

    def __init__(self, run_id: str | None = None, *, tracking_uri: str | None = None,
                 prefix: str = "checkpoint", artifacts: bool = True) -> None:
        active = mlflow.active_run()
        self.run_id = run_id or (active.info.run_id if active is not None else None)
        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        self.prefix = prefix
        self.artifacts = artifacts
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        self._warned = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MlflowLogger(run_id={self.run_id!r}, tracking_uri={self.tracking_uri!r})"

    def _target(self) -> str | None:
        if self.run_id is not None:
            return self.run_id
        active = mlflow.active_run()
        if active is not None:
            return str(active.info.run_id)
        with self._lock:
            if not self._warned:
                self._warned = True
                log.warning("MlflowLogger: no MLflow run to log checkpoints to (create the "
                            "logger inside `with mlflow.start_run():` or pass run_id=); "
                            "skipping")
        return None

    def __call__(self, record: CommitRecord) -> None:
        run_id = self._target()
        if run_id is None:
            return
        values = {"raw_bytes": float(record.raw_bytes),
                  "stored_bytes": float(record.stored_bytes),
                  "save_seconds": record.seconds}
        if record.verified is not None:
            values["verify_seconds"] = record.verify_seconds
        for name, value in values.items():
            self._client.log_metric(run_id, f"{self.prefix}/{name}", value, step=record.step)
        self._client.set_tag(run_id, "cloudckpt.checkpoint_uri", record.uri)
        self._client.set_tag(run_id, "cloudckpt.checkpoint_step", str(record.step))
        if self.artifacts:
            doc: dict[str, Any] = dataclasses.asdict(record)
            doc["metrics"] = dict(record.metrics)
            self._client.log_dict(run_id, doc,
                                  f"cloudckpt/checkpoints/step-{record.step:012d}.json")
