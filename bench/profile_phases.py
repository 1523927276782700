"""Where cloudckpt spends a local save and load: per-phase thread-seconds, in one process.

Wraps (at run time, without touching the package) the functions ``cloudckpt.engine.writer`` and
``cloudckpt.engine.reader`` call for each chunk: codec encode/decode, xxh3 checksums, store
put/get and tensor allocation. Each wrapped call adds its wall time and its thread CPU time
(``[cpu]``) to its phase, summed over the worker threads: wall sums exceed the run's wall time
when threads wait for the 2 vCPUs or the GIL; CPU sums say what the work itself costs.
"copy/other" in a load is the rest of the per-chunk work (copying decoded bytes into tensors).

Usage::

    .venv/bin/python bench/profile_phases.py --size-mib 1024 --dtype fp32 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_save_load import REPO, build_state, touch

MiB = 1 << 20


class Phases:
    """Thread-safe accumulator of seconds per phase name."""

    def __init__(self) -> None:
        self.secs: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def timed(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
                with self._lock:
                    self.secs[phase] += wall
                    self.secs[f"{phase} [cpu]"] += cpu

        return wrapper


class _TimedStore:
    """Delegates to a store, timing put/get/get_range."""

    def __init__(self, store: Any, phases: Phases) -> None:
        self._store = store
        self.put = phases.timed("store.put", store.put)
        self.get = phases.timed("store.get", store.get)
        self.get_range = phases.timed("store.get", store.get_range)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class _TimedCodec:
    def __init__(self, codec: Any, phases: Phases) -> None:
        self.name = codec.name
        self.encode = phases.timed(f"encode {codec.name}", codec.encode)
        self.decode = phases.timed(f"decode {codec.name}", codec.decode)


class _TimedXxhash:
    def __init__(self, module: Any, phases: Phases) -> None:
        self.xxh3_64_hexdigest = phases.timed("xxh3", module.xxh3_64_hexdigest)


@contextmanager
def instrumented(phases: Phases) -> Iterator[None]:
    from cloudckpt.engine import reader, writer

    saved = {(reader, "get_codec"): reader.get_codec, (writer, "get_codec"): writer.get_codec,
             (reader, "open_store"): reader.open_store, (writer, "open_store"): writer.open_store,
             (reader, "xxhash"): reader.xxhash, (writer, "_xxh"): writer._xxh,
             (reader, "_allocate"): reader._allocate,
             (reader, "_decode_chunk"): reader._decode_chunk}
    orig_get_codec = reader.get_codec
    orig_open = reader.open_store
    for mod in (reader, writer):
        mod.get_codec = lambda name: _TimedCodec(orig_get_codec(name), phases)  # type: ignore
        mod.open_store = lambda *a, **k: _TimedStore(orig_open(*a, **k), phases)  # type: ignore
    reader.xxhash = _TimedXxhash(reader.xxhash, phases)  # type: ignore[assignment]
    writer._xxh = phases.timed("xxh3", writer._xxh)
    reader._allocate = phases.timed("allocate", reader._allocate)
    reader._decode_chunk = phases.timed("chunk total", reader._decode_chunk)
    try:
        yield
    finally:
        for (mod, name), value in saved.items():
            setattr(mod, name, value)


def profile_once(state: dict[str, Any], loc: Path, compression: str) -> dict[str, dict[str, float]]:
    import cloudckpt

    out: dict[str, dict[str, float]] = {}
    phases = Phases()
    with instrumented(phases):
        t0 = time.perf_counter()
        cloudckpt.save(state, str(loc), compression=compression)
        phases.secs["WALL"] = time.perf_counter() - t0
    out["save"] = dict(phases.secs)
    phases = Phases()
    with instrumented(phases):
        t0 = time.perf_counter()
        loaded = cloudckpt.load(str(loc))
        touch(loaded)
        phases.secs["WALL"] = time.perf_counter() - t0
    sec = phases.secs
    for sfx in ("", " [cpu]"):
        decode = sum(v for k, v in sec.items() if k.startswith("decode") and k.endswith(sfx))
        rest = sec.pop(f"chunk total{sfx}") - decode - sec[f"xxh3{sfx}"]
        sec[f"copy/other (chunk - decode - xxh3){sfx}"] = rest
    out["load"] = dict(sec)
    del loaded
    shutil.rmtree(loc)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="per-phase time of cloudckpt save/load (local)")
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--compression", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=REPO / "bench" / ".scratch")
    args = p.parse_args(argv)
    state = build_state(args.size_mib, args.dtype)
    workdir = args.workdir.resolve() / f"profile-{os.getpid()}"
    workdir.mkdir(parents=True)
    runs = []
    try:
        for r in range(args.repeats):
            runs.append(profile_once(state, workdir / f"r{r}", args.compression))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"### cloudckpt phases, local, {args.dtype}, size-mib {args.size_mib}, "
          f"compression={args.compression}, median of {args.repeats} (thread-seconds)\n")
    for op in ("save", "load"):
        names = sorted({k for run in runs for k in run[op]}, key=lambda k: (k != "WALL", k))
        print(f"| {op} phase | seconds |\n|---|---|")
        for k in names:
            print(f"| {k} | {statistics.median(run[op].get(k, 0.0) for run in runs):.3f} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
