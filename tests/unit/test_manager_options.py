"""The manager's option objects, save decision policies, step resolution and run context."""

from __future__ import annotations

import logging
import signal

import pytest

import cloudckpt
from cloudckpt.errors import InvalidArgument, NotFound
from cloudckpt.manager import (
    AnyOf,
    AnySave,
    ArchivePolicy,
    AsyncOptions,
    CheckpointManager,
    CheckpointRecord,
    CheckpointSummary,
    DecisionContext,
    EveryNEpochs,
    EveryNSteps,
    KeepBest,
    KeepEvery,
    KeepLast,
    OnImprovement,
    PreemptionOptions,
    RunContext,
    SavePoint,
    resolve_step,
)
from cloudckpt.manager.decisions import decide


def _ctx(*losses: float, metric: str | None = "loss", mode: str = "min") -> DecisionContext:
    done = [CheckpointSummary(i + 1, 0.0, {"loss": v}) for i, v in enumerate(losses)]
    return DecisionContext(metric=metric, mode=mode, committed=lambda: done)


def test_option_objects_validate() -> None:
    assert AsyncOptions() == AsyncOptions(blocking=True, when_busy="wait", exit_timeout=300.0)
    for bad in ({"when_busy": "drop"}, {"exit_timeout": -1.0}, {"exit_timeout": float("nan")},
                {"blocking": "no"}):
        with pytest.raises(InvalidArgument):
            AsyncOptions(**bad)  # type: ignore[arg-type]
    assert signal.SIGTERM in PreemptionOptions().signals
    assert PreemptionOptions(signals=[signal.SIGINT]).signals == (signal.SIGINT,)  # type: ignore[arg-type]
    for bad_p in ({"signals": ()}, {"signals": (99999,)}, {"deadline": 0}):
        with pytest.raises(InvalidArgument):
            PreemptionOptions(**bad_p)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        ArchivePolicy()


def test_save_policies_and_union() -> None:
    ctx = _ctx()
    every = EveryNSteps(5)
    assert every.should_save(SavePoint(10), context=ctx)
    assert not every.should_save(SavePoint(0), context=ctx)
    epochs = EveryNEpochs(2)
    assert epochs.should_save(SavePoint(7, epoch=1, epoch_end=True), context=ctx)
    assert not epochs.should_save(SavePoint(7, epoch=1), context=ctx)
    combined = every | epochs | OnImprovement()
    assert isinstance(combined, AnySave) and len(combined.policies) == 3  # flattened
    assert combined == AnySave((EveryNSteps(5), EveryNEpochs(2), OnImprovement()))
    for bad in (0, -1, True, 2.5):
        with pytest.raises(InvalidArgument):
            EveryNSteps(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        OnImprovement(mode="best")


def test_on_improvement_reads_committed_and_own_metric() -> None:
    imp = OnImprovement()
    assert imp.should_save(SavePoint(1, metrics={"loss": 3.0}), context=_ctx())  # nothing yet
    assert imp.should_save(SavePoint(3, metrics={"loss": 0.5}), context=_ctx(1.0, 2.0))
    assert not imp.should_save(SavePoint(3, metrics={"loss": 1.5}), context=_ctx(1.0, 2.0))
    assert not imp.should_save(SavePoint(3, metrics={"loss": float("nan")}), context=_ctx())
    assert not imp.should_save(SavePoint(3), context=_ctx())
    assert not imp.should_save(SavePoint(3, metrics={"loss": 0.1}), context=_ctx(metric=None))
    acc = OnImprovement("loss", "max")
    assert acc.should_save(SavePoint(3, metrics={"loss": 2.5}), context=_ctx(1.0, 2.0))


def test_decide_logs_why(caplog: pytest.LogCaptureFixture) -> None:
    policy = EveryNSteps(5) | OnImprovement()
    with caplog.at_level(logging.DEBUG, logger="cloudckpt.manager"):
        assert decide(policy, SavePoint(10), context=_ctx())
        assert not decide(policy, SavePoint(11), context=_ctx())
        assert decide(None, SavePoint(12), context=_ctx(), final=True)
        assert not decide(None, SavePoint(13), context=_ctx())
    msgs = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert msgs[0] == (logging.INFO, "step 10: saving (EveryNSteps(n=5))")
    assert msgs[1][0] == logging.DEBUG and msgs[1][1].startswith("step 11: not saving")
    assert msgs[2] == (logging.INFO, "step 12: saving (final step)")
    assert msgs[3] == (logging.DEBUG, "step 13: not saving (no save policy)")


def test_retention_union() -> None:
    policy = KeepLast(2) | KeepBest(1, "loss") | KeepEvery(10)
    assert policy == AnyOf((KeepLast(2), KeepBest(1, "loss"), KeepEvery(10)))


def _rec(step: int, loss: float | None = None) -> CheckpointRecord:
    return CheckpointRecord(step, f"mem://run/{step}", "hot", float(step),
                            metrics={} if loss is None else {"loss": loss})


def test_resolve_step() -> None:
    recs = [_rec(1, 0.5), _rec(2, 0.2), _rec(3)]
    assert resolve_step(recs, "latest") == 3
    assert resolve_step(recs, "best", "loss", "min") == 2
    assert resolve_step(recs, "best", "loss", "max") == 1
    assert resolve_step(recs, "best") is None  # no metric
    assert resolve_step([], "latest") is None and resolve_step([], "best", "loss") is None
    assert resolve_step(recs, 2) == 2
    with pytest.raises(NotFound, match="step 7 under mem://run"):
        resolve_step(recs, 7, uri="mem://run")
    for bad in ("newest", True, 2.0):
        with pytest.raises(InvalidArgument):
            resolve_step(recs, bad)  # type: ignore[arg-type]


def test_manager_takes_option_objects(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mgr = CheckpointManager(tmp_path / "run", metric="loss",
                            async_options=AsyncOptions(blocking=False))
    assert isinstance(mgr.context, RunContext) and mgr.context.uri == mgr.uri
    assert mgr.retention == AnyOf((KeepLast(3), KeepBest(1, "loss", "min")))
    assert CheckpointManager(tmp_path / "run", keep_last=None).retention is None
    for kw in ({"async_options": {"blocking": False}}, {"preemption": "yes"},
               {"save_policy": 5}, {"retention": 3}, {"mode": "best"},
               {"archive": "GLACIER"}):
        with pytest.raises(InvalidArgument):
            CheckpointManager(tmp_path / "run", **kw)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CheckpointManager(tmp_path / "run", save_every_steps=5)  # type: ignore[call-arg]
    assert cloudckpt.EveryNSteps is EveryNSteps and cloudckpt.AsyncOptions is AsyncOptions
