"""Retention policies are pure functions; the latest and the best are never deleted."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudckpt.manager import (
    AnyOf,
    CheckpointSummary,
    KeepBest,
    KeepEvery,
    KeepLast,
    KeepPinned,
    KeepWithin,
    plan_retention,
)


def ck(step: int, loss: float | None = None, t: float | None = None,
       pinned: bool = False) -> CheckpointSummary:
    return CheckpointSummary(step, float(step) if t is None else t,
                             {} if loss is None else {"loss": loss}, pinned)


def test_keep_last() -> None:
    cks = [ck(s) for s in (10, 20, 30, 40, 50)]
    assert plan_retention(cks, KeepLast(2), now=100) == [10, 20, 30]


def test_best_survives_rotation_limit_hf_trainer_bug_class() -> None:
    # HF Trainer #15089/#35070: save_total_limit rotated the best checkpoint away
    losses = {10: 0.9, 20: 0.1, 30: 0.5, 40: 0.6, 50: 0.7}
    cks = [ck(s, loss) for s, loss in losses.items()]
    doomed = plan_retention(cks, KeepLast(1), now=100, metric="loss", mode="min")
    assert 20 not in doomed and 50 not in doomed
    assert doomed == [10, 30, 40]


def test_keep_best_takes_best_not_first_lightning_bug_class() -> None:
    # Lightning #19844: save_top_k kept the first k instead of the best k
    cks = [ck(s, loss) for s, loss in {1: 0.5, 2: 0.4, 3: 0.1, 4: 0.2, 5: 0.3}.items()]
    assert KeepBest(2, "loss", "min").keep(cks, 0) == {3, 4}
    assert KeepBest(2, "loss", "max").keep(cks, 0) == {1, 2}


def test_combinations_with_fake_clock() -> None:
    now = 1_000_000.0
    cks = [ck(s, loss=1.0 / s, t=now - (100 - s) * 60) for s in range(10, 101, 10)]
    policy = AnyOf((KeepLast(2), KeepEvery(50), KeepWithin(25 * 60), KeepPinned()))
    doomed = plan_retention(cks, policy, now, metric="loss", mode="min")
    # kept: last two (90, 100), every 50 (50, 100), within 25 min (80, 90, 100), best (100)
    assert doomed == [10, 20, 30, 40, 60, 70]
    pinned = [ck(s, t=now - (100 - s) * 60, pinned=(s == 20)) for s in range(10, 101, 10)]
    assert 20 not in plan_retention(pinned, KeepLast(1), now)


def test_nan_and_missing_metrics_are_ignored_for_best() -> None:
    cks = [ck(1, float("nan")), ck(2), ck(3, 0.5), ck(4, 0.7)]
    assert plan_retention(cks, KeepLast(1), 0, metric="loss", mode="min") == [1, 2]


def test_empty_and_keep_zero() -> None:
    assert plan_retention([], KeepLast(3), 0) == []
    assert plan_retention([ck(1), ck(2)], KeepLast(0), 0) == [1]  # latest survives anyway


@settings(max_examples=300, deadline=None)
@given(losses=st.lists(st.one_of(st.none(), st.floats(0, 10, allow_nan=False)), min_size=1,
                       max_size=30),
       keep_last=st.integers(0, 5), keep_best=st.integers(0, 3),
       mode=st.sampled_from(["min", "max"]))
def test_property_latest_and_best_never_deleted(losses, keep_last, keep_best, mode) -> None:  # type: ignore[no-untyped-def]
    cks = [ck(i + 1, loss) for i, loss in enumerate(losses)]
    policy = AnyOf((KeepLast(keep_last), KeepBest(keep_best, "loss", mode)))
    doomed = set(plan_retention(cks, policy, 0, metric="loss", mode=mode))
    kept = {c.step for c in cks} - doomed
    assert len(cks) in kept
    scored = [(c.metrics["loss"], c.step) for c in cks if "loss" in c.metrics]
    if scored:
        best = (min if mode == "min" else max)(v for v, _ in scored)
        assert any(s in kept for v, s in scored if v == best)
    # exactly the union of the policies' choices (plus latest and best), nothing else
    newest = sorted(c.step for c in cks)[-keep_last:] if keep_last else []
    assert set(newest) <= kept
    ranked = sorted(scored, key=lambda vs: ((vs[0] if mode == "min" else -vs[0]), -vs[1]))
    assert {s for _, s in ranked[:keep_best]} <= kept
    assert len(kept) <= len(set(newest) | {s for _, s in ranked[:max(keep_best, 1)]}) + 1
