"""``cloudckpt report`` end to end, on local disk and S3 (moto): the page's numbers equal
``cloudckpt ls --json`` and the manifests; headless Chromium (Debian's ``chromium`` package)
renders it offline: a non-blank screenshot, the SVG charts in the DOM, and no network request
(resolver mapped to nothing, a dead loopback proxy, and the page's CSP; a control page shows
that the net-log check catches a load the CSP would have blocked).

Needs ``chromium`` on PATH (``apt-get install -y chromium``); those checks skip without it.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cloudckpt import CheckpointManager
from cloudckpt.engine.commit import read_manifest
from cloudckpt.format.keys import MANIFEST_KEY, step_dir
from cloudckpt.manager import ArchivePolicy, KeepEvery, KeepLast, RunContext
from cloudckpt.manager.archive import archive_checkpoint
from cloudckpt.storage import open_store, substore
from tests.conftest import StoreFactory

HOSTILE = "<script>alert(1)</script>"
CHROMIUM = next((p for n in ("chromium", "chromium-browser", "google-chrome")
                 if (p := shutil.which(n))), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH: `apt-get install -y chromium` "
                             "(Debian) to run the headless-browser checks")


def cli(*args: str, opts: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    pre = ["-o", json.dumps(opts)] if opts else []
    return subprocess.run([sys.executable, "-m", "cloudckpt", *pre, *args],
                          capture_output=True, text=True, timeout=180)


def _build_run(f: StoreFactory) -> str:
    """A run with metrics (one hostile name), retention archiving to another prefix, a pin,
    a fork (generation 1), an in-place tier on S3 and a corrupt manifest."""
    uri, archive = f.uri("run"), f.uri("archive")
    policy = KeepLast(2) | KeepEvery(30)
    torch.manual_seed(0)
    frozen, head = torch.nn.Linear(32, 64), torch.nn.Linear(64, 4)
    frozen.requires_grad_(False)  # unchanged between saves: shared when saves are incremental
    model = torch.nn.Sequential(frozen, head)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    mgr = CheckpointManager(uri, metric="loss", retention=policy, storage_options=f.options,
                            archive=ArchivePolicy(uri=archive, storage_options=f.options))
    for step, loss in {10: 0.9, 20: 0.2, 30: 0.7, 40: 0.6, 50: 0.5, 60: 0.4}.items():
        model(torch.randn(4, 32)).sum().backward()
        opt.step()
        mgr.save(step, epoch=step // 20, model=model, optimizer=opt,
                 metrics={"loss": loss, "accuracy": 1 - loss / 2, HOSTILE: step / 10})
        if step == 30:
            mgr.pin(30)
    fork = CheckpointManager(uri, metric="loss", retention=policy, storage_options=f.options,
                             archive=ArchivePolicy(uri=archive, storage_options=f.options))
    fork.restore(30, model=model, optimizer=opt)
    fork.save(35, model=model, optimizer=opt, metrics={"loss": 0.3, "accuracy": 0.85})
    store = open_store(uri, storage_options=f.options)
    if f.backend == "s3":
        archive_checkpoint(RunContext.open(store, storage_options=f.options), 50,
                           ArchivePolicy(storage_class="STANDARD_IA"))
    store.put(f"{step_dir(60)}/{MANIFEST_KEY}", b"damaged", create_only=False)
    return uri


@pytest.fixture(scope="module", params=["local", "s3"])
def reported(request: pytest.FixtureRequest, emus: Any,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run on one backend, its report (through the CLI, in a subprocess) and its
    ``ls --json``: built once per backend for the tests below."""
    tmp = tmp_path_factory.mktemp(f"report-{request.param}")
    f = StoreFactory(request.param, emus, tmp)
    uri = _build_run(f)
    out = tmp / "report.html"
    r = cli("report", uri, "--html", str(out), "--metric", "loss", "--keep-last", "2",
            "--keep-every", "30", opts=f.options)
    assert r.returncode == 0, r.stderr
    ls = cli("ls", uri, "--json", opts=f.options)
    assert ls.returncode == 0, ls.stderr
    return {"uri": uri, "opts": f.options, "page": out, "report": r, "tmp": tmp,
            "ls": json.loads(ls.stdout)}


class _Dom(HTMLParser):
    """Tags, the data block, and the text of each table row (by ``data-step``)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: dict[tuple[str, int], str] = {}
        self.text: list[str] = []
        self.data = ""
        self._table, self._row, self._in_data = "", None, False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        self._in_data = tag == "script" and a.get("id") == "cloudckpt-data"
        if tag == "table":
            self._table = a.get("id") or ""
        if tag == "tr" and a.get("data-step"):
            self._row = (self._table, int(a["data-step"] or 0))
            self.rows[self._row] = ""

    def handle_endtag(self, tag: str) -> None:
        self._in_data = False
        if tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._in_data:
            self.data += data
            return
        self.text.append(data)
        if self._row is not None:
            self.rows[self._row] += data + " "


def _dom(html: str) -> _Dom:
    d = _Dom()
    d.feed(html)
    d.close()
    return d


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")


def _check_against_ls(page: _Dom, ls_rows: list[dict[str, Any]], uri: str,
                      opts: dict[str, Any]) -> None:
    data = json.loads(page.data)
    rows = {r["step"]: r for r in data["rows"]}
    assert sorted(rows) == [r["step"] for r in ls_rows]
    store = open_store(uri, storage_options=opts)
    for ls in ls_rows:
        row = rows[ls["step"]]
        # 'released' (deleted, data awaiting gc) is what ls calls 'incomplete' unless it knows
        assert row["status"] == ls["status"] or (row["status"], ls["status"]) == (
            "released", "incomplete"), (row, ls)
        text = page.rows[("checkpoints", ls["step"])]
        assert row["status"] in text
        if ls["status"] != "committed":
            continue
        for key in ("raw_bytes", "stored_bytes", "metrics", "generation", "tier", "pinned",
                    "location", "added_bytes", "shared_bytes"):
            if key in ls:
                assert row[key] == ls[key], (key, row, ls)
        assert _iso(row["time"]) == ls["time"]
        m = read_manifest(open_store(ls["uri"], storage_options=opts)
                          if ls.get("location") == "archived" else
                          substore(store, step_dir(ls["step"])))
        assert (row["added_bytes"], row["shared_bytes"]) == (m.added_bytes, m.shared_bytes)
        assert row["raw_bytes"] == m.raw_bytes and row["stored_bytes"] == m.stored_bytes
        for n in (row["raw_bytes"], row["stored_bytes"], row["added_bytes"]):
            assert f"{n:,}" in text  # the visible table shows the same numbers
        metrics_text = page.rows[("metrics", ls["step"])]
        assert all(f"{v:.6g}" in metrics_text for v in ls["metrics"].values())


def test_report_numbers_match_ls_and_the_manifests(reported: dict[str, Any]) -> None:
    uri, opts = reported["uri"], reported["opts"]
    assert "1 damaged" in reported["report"].stdout
    assert "Traceback" not in reported["report"].stderr
    page = _dom(reported["page"].read_text())
    _check_against_ls(page, reported["ls"], uri, opts)
    data = json.loads(page.data)
    rows = {r["step"]: r for r in data["rows"]}
    assert rows[60]["status"] == "corrupt" and rows[60]["problems"]
    assert rows[35]["generation"] == 1 and rows[35]["live"] and data["live_generation"] == 1
    assert rows[40]["location"] == "archived" and rows[40]["retention"] == "n/a"  # retention
    assert rows[35]["reasons"][0] == "latest" and rows[30]["reasons"][:1] == ["pinned"]
    assert rows[30]["save_seconds"] is not None and rows[30]["throughput_bytes_per_s"] > 0
    if "s3" in uri:
        assert rows[50]["tier"] == "STANDARD_IA"
    assert HOSTILE in "".join(page.text) and [t for t, _ in page.tags].count("script") == 1


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-default-apps", "--disable-domain-reliability",
           "--disable-breakpad", "--no-pings",
           "--disable-features=NetworkTimeServiceQuerying,Translate,MediaRouter",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
           f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, timeout=120)


def _page_requests(net_log: Path) -> list[str]:
    """URLs the page asked for (the browser's own background requests have no origin)."""
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in log["events"]
            if e["type"] == start and "url" in e.get("params", {})
            and e["params"].get("initiator") != "not an origin"
            and not e["params"]["url"].startswith(("file:", "data:"))]


def _pixels(png: bytes) -> np.ndarray:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) to an array."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(png):
        n, kind = struct.unpack(">I4s", png[pos:pos + 8])
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", png[pos + 8:pos + 21])
        elif kind == b"IDAT":
            idat += png[pos + 8:pos + 8 + n]
        pos += 12 + n
    assert depth == 8 and ctype in (2, 6) and interlace == 0
    bpp = 3 if ctype == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, w * bpp + 1)
    out = np.zeros((h, w * bpp), np.uint8)
    prev = np.zeros(w * bpp, np.int32)
    for y in range(h):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if f == 1:
            line = np.cumsum(line.reshape(w, bpp), axis=0).reshape(-1) % 256
        elif f == 2:
            line = (line + prev) % 256
        elif f in (3, 4):
            cur, up = line.tolist(), prev.tolist()
            for x in range(len(cur)):
                a = cur[x - bpp] if x >= bpp else 0
                b, c = up[x], (up[x - bpp] if x >= bpp else 0)
                if f == 3:
                    cur[x] = (cur[x] + (a + b) // 2) & 255
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    cur[x] = (cur[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            line = np.array(cur, np.int32)
        out[y], prev = line, line
    return out.reshape(h, w, bpp)[:, :, :3]


def _colours(png: bytes) -> tuple[int, float]:
    """Distinct colours, and the share of pixels that are not white."""
    px = _pixels(png)
    flat = px.reshape(-1, 3).astype(np.uint32)
    packed = flat[:, 0] << 16 | flat[:, 1] << 8 | flat[:, 2]
    return len(np.unique(packed)), float(np.mean(packed != 0xFFFFFF))


@needs_chromium
def test_chromium_renders_the_report_offline(reported: dict[str, Any]) -> None:
    out, tmp = reported["page"], reported["tmp"]
    shot, net = tmp / "report.png", tmp / "net.json"
    _chromium(tmp, "--window-size=1000,1600", f"--screenshot={shot}",
              f"--log-net-log={net}", out.as_uri())
    assert shot.stat().st_size > 30_000, "screenshot suspiciously small"
    colours, ink = _colours(shot.read_bytes())
    assert colours > 50 and ink > 0.05, (colours, ink)
    assert _page_requests(net) == []
    dom = _chromium(tmp, "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = _dom(dom.stdout.decode())
    kinds = [a.get("data-chart") for t, a in page.tags if t == "figure"]
    assert {"bytes", "ratio", "duration", "throughput", "metric", "lanes", "lineage"} <= set(kinds)
    tags = [t for t, _ in page.tags]
    assert tags.count("svg") >= len(kinds) - 1 and "polyline" in tags
    assert tags.count("circle") >= 3 * 5  # points of the committed checkpoints
    assert tags.count("script") == 1 and HOSTILE in "".join(page.text)
    _check_against_ls(page, reported["ls"], reported["uri"], reported["opts"])  # as parsed


@needs_chromium
def test_the_offline_checks_can_fail(tmp_path: Path) -> None:
    """Controls: a blank page fails the screenshot check, a page loading an image is caught
    by the net-log check, and the report's CSP blocks that same image."""
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    shot = tmp_path / "blank.png"
    _chromium(tmp_path, "--window-size=400,300", f"--screenshot={shot}", blank.as_uri())
    assert _colours(shot.read_bytes()) == (1, 0.0)
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<!DOCTYPE html><html><body><img src="http://example.invalid/x.png">'
                     "</body></html>")
    net = tmp_path / "net1.json"
    _chromium(tmp_path, f"--log-net-log={net}", "--dump-dom", leaky.as_uri())
    assert _page_requests(net) == ["http://example.invalid/x.png"]
    from cloudckpt.cli.report_html import render_html
    from cloudckpt.manager.report import RunReport

    page = render_html(RunReport("memory://x/run", 0.0, "none", None, "min", 0, (), ()))
    guarded = tmp_path / "guarded.html"
    guarded.write_text(page.replace("<body>", '<body><img src="http://example.invalid/x.png">'))
    net = tmp_path / "net2.json"
    _chromium(tmp_path, f"--log-net-log={net}", "--dump-dom", guarded.as_uri())
    assert _page_requests(net) == []


def test_report_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cloudckpt.cli import main

    def report(*args: str) -> tuple[int, str, str]:
        code = main(["report", *args])
        got = capsys.readouterr()
        return code, got.out, got.err

    page = str(tmp_path / "x.html")
    code, _, err = report(str(tmp_path / "nope"), "--html", page)
    assert code == 3 and err.count("\n") == 1 and "nothing at" in err, err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    code, _, err = report(str(empty), "--html", page)
    assert code == 3 and "no checkpoints" in err, err
    CheckpointManager(str(tmp_path / "one")).save(1, model=torch.nn.Linear(2, 2))
    code, _, err = report(str(tmp_path / "one" / step_dir(1)), "--html", page)
    assert code == 2 and "run root" in err, err
    assert not Path(page).exists()
    with pytest.raises(SystemExit) as e:
        report(str(tmp_path / "one"), "--html", page, "--keep-last", "-1")
    assert e.value.code == 2
    code, out, _ = report(str(tmp_path / "one"), "--html", "-")
    assert code == 0 and out.startswith("<!DOCTYPE html>") and not Path(page).exists()
    code, out, _ = report(str(tmp_path / "one"), "--html", page)
    assert code == 0 and Path(page).read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
