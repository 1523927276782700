"""``cloudckpt report``'s data: rows gathered from a memory:// run match its manifests, retention
is explained without changing decisions, damaged checkpoints become rows, and every text from
storage is escaped on the page (a hostile metric name renders as text)."""

from __future__ import annotations

import json
import math
import uuid
from html.parser import HTMLParser
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cloudckpt import CheckpointManager
from cloudckpt.cli.report_html import DATA_ID, render_html, report_data
from cloudckpt.engine.commit import read_manifest
from cloudckpt.format.keys import MANIFEST_KEY, archived_key, step_dir
from cloudckpt.manager import (
    AnyOf,
    CheckpointSummary,
    KeepBest,
    KeepEvery,
    KeepLast,
    KeepPinned,
    KeepWithin,
    RunContext,
    plan_retention,
)
from cloudckpt.manager.index import META_KEY
from cloudckpt.manager.report import (
    describe_policy,
    explain_retention,
    gather_report,
    save_seconds,
)
from cloudckpt.storage import open_store, substore

HOSTILE = "<script>alert(1)</script>"
LOSSES = {10: 0.9, 20: 0.2, 30: 0.7, 40: 0.6, 50: 0.5, 60: 0.4}
POLICY = KeepLast(2) | KeepEvery(30)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 2))


def _run() -> tuple[str, CheckpointManager]:
    uri = f"memory://{uuid.uuid4().hex[:12]}/run"
    mgr = CheckpointManager(uri, metric="loss", retention=POLICY)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step, loss in LOSSES.items():
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        mgr.save(step, epoch=step // 20, model=model, optimizer=opt,
                 metrics={"loss": loss, "acc": 1 - loss, HOSTILE: step / 10})
        if step == 30:
            mgr.pin(30)
    return uri, mgr


class _Page(HTMLParser):
    """Elements and text of a page, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.data_block: str | None = None
        self._in_data = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_data = tag == "script" and dict(attrs).get("id") == DATA_ID

    def handle_endtag(self, tag: str) -> None:
        self._in_data = False

    def handle_data(self, data: str) -> None:
        if self._in_data:
            self.data_block = (self.data_block or "") + data
        else:
            self.text.append(data)


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    p.close()
    return p


def test_rows_match_the_manifests_and_retention_is_explained() -> None:
    uri, mgr = _run()
    report = gather_report(RunContext.open(uri, metric="loss", retention=POLICY))
    store = open_store(uri)
    # retention ran after every save: 10 and 40 are gone; 20 best, 30 pinned and every 30
    committed = [r for r in report.rows if r.status == "committed"]
    assert [r.step for r in committed] == [20, 30, 50, 60] == mgr.steps()
    # deleted ones whose data awaits gc (grace period) are shown as such, not as damage
    assert all(r.status == "released" and not r.damaged and r.retention == "n/a"
               for r in report.rows if r.step not in (20, 30, 50, 60))
    for row in committed:
        m = read_manifest(substore(store, step_dir(row.step)))
        meta = m.metadata[META_KEY]
        assert row.status == "committed" and row.location == "hot" and row.live
        assert (row.raw_bytes, row.stored_bytes) == (m.raw_bytes, m.stored_bytes)
        assert (row.added_bytes, row.shared_bytes) == (m.added_bytes, m.shared_bytes)
        assert row.added_bytes is not None and row.added_bytes + (row.shared_bytes or 0) > 0
        assert dict(row.metrics) == meta["metrics"] == {
            "loss": LOSSES[row.step], "acc": 1 - LOSSES[row.step], HOSTILE: row.step / 10}
        assert (row.time, row.epoch, row.generation) == (meta["time"], row.step // 20, 0)
        assert row.save_seconds is not None and 0 <= row.save_seconds < 60
        assert row.ratio == pytest.approx(m.stored_bytes / m.raw_bytes)
        assert row.pinned == (row.step == 30)
    reasons = {r.step: r.reasons for r in committed}
    assert reasons == {20: ("the best by loss",), 30: ("pinned", "every 30 steps"),
                       50: ("last 2",), 60: ("latest", "last 2", "every 30 steps")}
    assert {r.retention for r in committed} == {"keep"}
    assert report.metric_names == tuple(sorted(["loss", "acc", HOSTILE]))
    assert report.policy == "last 2 | every 30 steps"
    # the page's JSON block carries the same numbers
    data = json.loads(_parse(render_html(report)).data_block or "")
    assert data == json.loads(json.dumps(report_data(report)))
    assert [(r["step"], r["stored_bytes"], r["metrics"]) for r in data["rows"]] == [
        (r.step, r.stored_bytes, dict(r.metrics)) for r in report.rows]


def test_a_tighter_policy_is_explained_as_removals() -> None:
    uri, _ = _run()
    report = gather_report(RunContext.open(uri, metric="loss", retention=KeepLast(1)))
    got = {r.step: (r.retention, r.reasons) for r in report.rows if r.status == "committed"}
    assert got == {20: ("keep", ("the best by loss",)), 30: ("keep", ("pinned",)),
                   50: ("remove", ()), 60: ("keep", ("latest", "last 1"))}


def test_save_seconds_needs_the_managers_record() -> None:
    uri, _ = _run()
    m = read_manifest(substore(open_store(uri), step_dir(60)))
    assert save_seconds(m) is not None
    meta = {**m.metadata[META_KEY]}
    del meta["write_started"]
    assert save_seconds(type(m)(**{**m.__dict__, "metadata": {META_KEY: meta}})) is None
    for bad in ("soon", float("nan"), True, 1e30):
        hostile = {**m.metadata[META_KEY], "write_started": bad}
        assert save_seconds(type(m)(**{**m.__dict__, "metadata": {META_KEY: hostile}})) is None


def test_damaged_checkpoints_are_rows_never_fatal() -> None:
    uri, _ = _run()
    store = open_store(uri)
    store.put(f"{step_dir(50)}/{MANIFEST_KEY}", b"not a manifest", create_only=False)
    store.put(f"{step_dir(70)}/data/x/000000.bin", b"\0" * 100)
    report = gather_report(RunContext.open(uri, metric="loss", retention=POLICY))
    rows = {r.step: r for r in report.rows}
    assert rows[50].status == "corrupt" and "does not validate" in rows[50].problems[0]
    assert rows[70].status == "incomplete" and rows[70].stored_bytes == 100
    assert rows[50].retention == rows[70].retention == "n/a"
    assert rows[60].retention == "keep" and rows[20].status == "committed"
    page = render_html(report)
    assert "corrupt" in page and "Damaged checkpoints" in page


def _policy(parts: list[str], n: int) -> AnyOf:
    table: dict[str, Any] = {"last": KeepLast(n), "best": KeepBest(n, "loss", "max"),
                             "every": KeepEvery(n + 1), "within": KeepWithin(n * 10.0),
                             "pinned": KeepPinned()}
    return AnyOf(tuple(table[p] for p in parts))


@given(st.lists(st.tuples(st.integers(0, 60), st.one_of(st.none(), st.floats(allow_nan=True)),
                          st.booleans()), min_size=1, max_size=12, unique_by=lambda t: t[0]),
       st.lists(st.sampled_from(["last", "best", "every", "within", "pinned"]), max_size=4),
       st.integers(0, 4), st.sampled_from([None, "loss"]), st.sampled_from(["min", "max"]))
def test_explain_retention_never_changes_the_decision(
        raw: list[tuple[int, float | None, bool]], parts: list[str], n: int,
        metric: str | None, mode: str) -> None:
    cks = [CheckpointSummary(s, float(s), {} if v is None else {"loss": v}, p)
           for s, v, p in raw]
    policy, now = _policy(parts, n), 50.0
    reasons = explain_retention(cks, policy, now, metric=metric, mode=mode)
    doomed = plan_retention(cks, policy, now, metric=metric, mode=mode)
    assert sorted(s for s, why in reasons.items() if not why) == doomed
    for s, why in reasons.items():  # each reason is true of the step
        assert ("latest" in why) == (s == max(c.step for c in cks))
        for part in policy.policies:
            text = describe_policy(part)
            if text != "pinned":
                assert (text in why) == (s in part.keep(cks, now))


def test_hostile_text_renders_as_text() -> None:
    uri, _ = _run()
    store = open_store(uri)
    evil_tier = '"><svg onload=alert(2)>'
    store.put(archived_key(5), json.dumps({
        "uri": f"memory://x/{HOSTILE}", "time": 1.0, "raw_bytes": 10, "stored_bytes": 5,
        "tier": evil_tier, "metrics": {"</script><script>alert(3)</script>": 0.5,
                                      "inf": "Infinity", "str": "x", "nan": math.nan},
    }).encode())
    report = gather_report(RunContext.open(uri, metric=HOSTILE, retention=POLICY))
    page = render_html(report)
    parsed = _parse(page)
    scripts = [a for t, a in parsed.tags if t == "script"]
    assert scripts == [{"type": "application/json", "id": DATA_ID}]
    assert not any(t in ("img", "iframe", "object", "embed", "link", "base") for t, _ in parsed.tags)
    assert not any(k.startswith("on") for _, a in parsed.tags for k in a)
    text = "".join(parsed.text)
    assert HOSTILE in text and evil_tier in text and "</script><script>alert(3)" in text
    assert HOSTILE not in page  # only its escaped form is in the markup
    data = json.loads(parsed.data_block or "")
    archived = next(r for r in data["rows"] if r["step"] == 5)
    assert archived["metrics"] == {"</script><script>alert(3)</script>": 0.5}
    assert archived["tier"] == evil_tier and archived["location"] == "archived"
    csp = next(a["content"] for t, a in parsed.tags if a.get("http-equiv") ==
               "Content-Security-Policy")
    assert csp is not None and "default-src 'none'" in csp and "script-src 'none'" in csp
