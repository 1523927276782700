"""Where cloudckpt spends a local save and load: per-phase thread-seconds, in one process.

Wraps (at run time, without touching the package) the functions that
``cloudckpt.engine.writer``, ``cloudckpt.engine.reader`` and ``cloudckpt.format.checksums``
call for each chunk (see :data:`HOOKS`): codec encode/decode, xxh3 checksums, store put/get
and tensor allocation. Each wrapped call adds its wall time and its thread CPU time (``[cpu]``)
to its phase, summed over the worker threads: wall sums exceed the run's wall time when
threads wait for the 2 vCPUs or the GIL; CPU sums say what the work itself costs. "copy/other"
in a load is the rest of the per-chunk work (copying decoded bytes into tensors). The state is
the one of the ``save_load_*`` scenarios (``bench/lib/state.py``).

Usage (from the repository root)::

    .venv/bin/python -m bench.profile_phases --size-mib 1024 --dtype fp32 --repeats 3
    .venv/bin/python -m bench.profile_phases --quick
"""

from __future__ import annotations

import importlib
import shutil
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.lib import cli, stats
from bench.lib.report import md_table, report
from bench.lib.state import DTYPES, State, build_state, touch


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
    """Delegates to a codec, timing encode and both decode paths."""

    def __init__(self, codec: Any, phases: Phases) -> None:
        self._codec = codec
        self.encode = phases.timed(f"encode {codec.name}", codec.encode)
        self.decode = phases.timed(f"decode {codec.name}", codec.decode)
        self.decode_into = phases.timed(f"decode {codec.name}", codec.decode_into)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._codec, name)


def _codecs(fn: Callable[..., Any], phases: Phases) -> Callable[..., Any]:
    return lambda name: _TimedCodec(fn(name), phases)


def _stores(fn: Callable[..., Any], phases: Phases) -> Callable[..., Any]:
    return lambda *a, **k: _TimedStore(fn(*a, **k), phases)


def _phase(name: str) -> Callable[[Callable[..., Any], Phases], Callable[..., Any]]:
    return lambda fn, phases: phases.timed(name, fn)


#: (module, the name it calls, how to wrap it): the per-chunk calls of a save and a load
HOOKS: list[tuple[str, str, Callable[[Callable[..., Any], Phases], Callable[..., Any]]]] = [
    ("cloudckpt.engine.writer", "get_codec", _codecs),
    ("cloudckpt.engine.writer", "checksum", _phase("xxh3")),
    ("cloudckpt.engine.writer", "open_store", _stores),
    ("cloudckpt.engine.reader", "open_store", _stores),
    ("cloudckpt.engine.reader", "_allocate", _phase("allocate")),
    ("cloudckpt.engine.reader", "_decode_chunk", _phase("chunk total")),
    ("cloudckpt.format.checksums", "get_codec", _codecs),
    ("cloudckpt.format.checksums", "checksum", _phase("xxh3")),
]


@contextmanager
def instrumented(phases: Phases) -> Iterator[None]:
    """Every hook of :data:`HOOKS` wrapped, for the duration of the block."""
    saved = []
    try:
        for modname, attr, wrap in HOOKS:
            mod = importlib.import_module(modname)
            if not hasattr(mod, attr):
                raise SystemExit(f"{modname} no longer has {attr}: update HOOKS in {__file__}")
            saved.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, wrap(getattr(mod, attr), phases))
        yield
    finally:
        for mod, attr, value in saved:
            setattr(mod, attr, value)


def profile_once(state: State, loc: Path, compression: str) -> dict[str, dict[str, float]]:
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
    p = cli.parser(__doc__)
    p.add_argument("--size-mib", type=int, help="fp32 raw size of the state (default 1024)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--compression", default="auto")
    p.add_argument("--repeats", type=int, help="default 3")
    args = cli.settle(p.parse_args(argv), {"size_mib": 1024, "repeats": 3},
                      {"size_mib": 16, "repeats": 1})
    state = build_state(args.size_mib, args.dtype)
    with cli.scratch(args, "profile") as workdir:
        runs = [profile_once(state, workdir / f"r{r}", args.compression)
                for r in range(args.repeats)]
    lines = [f"### cloudckpt phases, local, {args.dtype}, size-mib {args.size_mib}, "
             f"compression={args.compression}, median of {args.repeats} (thread-seconds)"]
    medians: dict[str, dict[str, float | None]] = {}
    for op in ("save", "load"):
        names = sorted({k for run in runs for k in run[op]}, key=lambda k: (k != "WALL", k))
        medians[op] = {k: stats.median(run[op].get(k, 0.0) for run in runs) for k in names}
        lines += ["", *md_table((f"{op} phase", "seconds"),
                                [(k, f"{v:.3f}") for k, v in medians[op].items() if v is not None])]
    report({"target": "profile_phases", "size_mib": args.size_mib, "dtype": args.dtype,
            "compression": args.compression, "repeats": args.repeats, "medians": medians,
            "runs": runs}, "\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
