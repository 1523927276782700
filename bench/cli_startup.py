"""How long the ``cloudckpt`` command takes to start and answer ``ls``, ``show`` and ``verify``
on a small local checkpoint run, in fresh processes, and what it imports to do so.

What it measures
    A run of three checkpoints of a tiny model is written to a scratch directory once (by the
    source tree under test). Then each command is run ``--repeats`` times as ``python -m cloudckpt ...`` in a
    fresh interpreter and timed by wall clock (process start to exit; the checkpoint's bytes are
    in the page cache after the first run) and by CPU time (user + system of the child, which
    other load on the machine distorts less than wall time), after one untimed run that writes
    the bytecode cache (as an installed package has it). Baselines in the same way: ``python -c pass`` and
    ``python -c "import torch"``. Per command the table shows the median and min, whether torch
    was imported (a second fresh run with ``-X importtime``, which also names the slowest
    top-level imports).

    ``--src DIR`` runs the commands against another source tree (``PYTHONPATH=DIR``), e.g. a
    ``git archive`` of an older commit, for a before/after comparison on the same machine.

Usage (from the repository root)::

    .venv/bin/python -m bench.cli_startup --repeats 5 --out bench/results/cli-startup.json
    git archive <commit> src | tar -x -C /tmp/before
    .venv/bin/python -m bench.cli_startup --src /tmp/before/src --out bench/results/x.json
    .venv/bin/python -m bench.cli_startup --quick
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.lib import REPO, cli, stats
from bench.lib.report import fmt, md_table, report

COMMANDS: dict[str, list[str]] = {
    "ls": ["ls", "{run}"],
    "ls --json": ["ls", "{run}", "--json"],
    "show": ["show", "{run}"],
    "verify": ["verify", "{run}"],
}


MAKE_RUN = """
import sys, torch
from cloudckpt import CheckpointManager
mgr = CheckpointManager(sys.argv[1], keep_last=None, metric="loss")
for step, loss in ((10, 0.5), (20, 0.3), (30, 0.4)):
    torch.manual_seed(step)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    mgr.save(step, model=model, optimizer=torch.optim.AdamW(model.parameters()),
             metrics={"loss": loss})
"""


def make_run(root: Path, env: dict[str, str]) -> str:
    """Three checkpoints of a tiny model under ``root/run``, written by the source tree under
    test (a fresh process with ``env``); returns the run URI."""
    uri = str(root / "run")
    subprocess.run([sys.executable, "-c", MAKE_RUN, uri], env=env, check=True, timeout=300)
    return uri


def _env(src: Path | None, pycache: Path) -> dict[str, str]:
    """The children's environment: ``src`` first on the path, and bytecode cached (under
    ``pycache``, outside the source tree) as it is for an installed package, even where the
    calling environment sets PYTHONDONTWRITEBYTECODE."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return env


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, from the children's resource usage) of
    one fresh process running ``argv``. CPU time is what a loaded machine distorts least.

    Raises:
        RuntimeError: the process failed (exit status other than 0).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.strip()[-300:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return took, cpu


def imports(argv: list[str], env: dict[str, str], top: int = 5) -> dict[str, Any]:
    """One ``-X importtime`` run: whether torch was imported, the total and the slowest
    top-level imports (cumulative microseconds)."""
    r = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=env, capture_output=True,
                       text=True, timeout=300)
    rows: list[tuple[int, str]] = []
    names: set[str] = set()
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cum, raw = line.removeprefix("import time:").split("|")
        name = raw.strip()
        names.add(name)
        if len(raw) - len(raw.lstrip(" ")) == 1:  # top level only (two spaces per level)
            rows.append((int(cum), name))
    rows.sort(reverse=True)
    return {"torch_imported": "torch" in names, "modules": len(names),
            "import_s": sum(c for c, _ in rows) / 1e6,
            "slowest": [{"module": n, "cumulative_s": c / 1e6} for c, n in rows[:top]]}


def measure(label: str, argv: list[str], env: dict[str, str], repeats: int) -> dict[str, Any]:
    timed(argv, env)  # untimed: writes the bytecode cache
    runs = [timed(argv, env) for _ in range(repeats)]
    times, cpus = [w for w, _ in runs], [c for _, c in runs]
    rec = {"command": label, "argv": argv[1:], "seconds": times, "cpu_seconds": cpus,
           "median_s": stats.median(times), "min_s": min(times),
           "median_cpu_s": stats.median(cpus), "load_avg_1m": os.getloadavg()[0],
           **imports(argv, env)}
    print(f"  {label:14} median {rec['median_s']:.3f} s wall, {rec['median_cpu_s']:.3f} s cpu; "
          f"torch imported: {rec['torch_imported']}", file=sys.stderr, flush=True)
    return rec


def table(recs: list[dict[str, Any]], repeats: int, src: str) -> str:
    rows = [[r["command"], fmt(r["median_s"], ".3f"), fmt(r["min_s"], ".3f"),
             fmt(r["median_cpu_s"], ".3f"), "yes" if r["torch_imported"] else "no",
             fmt(r["import_s"], ".3f"), f"{r['load_avg_1m']:.1f}",
             ", ".join(f"{s['module']} {s['cumulative_s']:.2f}" for s in r["slowest"][:3])]
            for r in recs]
    header = ["command", "median wall s", "min wall s", "median cpu s", "torch imported",
              "imports s (-X importtime)", "load avg", "slowest top-level imports (s)"]
    return "\n".join([*md_table(header, rows), "",
                      f"Fresh processes, {repeats} per command; source: {src}."])


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--repeats", type=int, help="fresh processes per command (default 5; "
                                               "--quick 1)")
    p.add_argument("--src", type=Path, default=None,
                   help="source tree to run the CLI from (PYTHONPATH); default: the installed "
                        "package (this checkout)")
    args = cli.settle(p.parse_args(argv), {"repeats": 5}, {"repeats": 1})
    py = sys.executable
    recs: list[dict[str, Any]] = []
    with cli.scratch(args, "cli-startup") as workdir:
        env = _env(args.src.resolve() if args.src else None, workdir / "pycache")
        run = make_run(workdir, env)
        recs.append(measure("python -c pass", [py, "-c", "pass"], env, args.repeats))
        recs.append(measure("import torch", [py, "-c", "import torch"], env, args.repeats))
        for label, cmd in COMMANDS.items():
            recs.append(measure(label, [py, "-m", "cloudckpt", *(a.format(run=run) for a in cmd)],
                                env, args.repeats))
    src = str(args.src) if args.src else str(REPO / "src")
    report({"repeats": args.repeats, "src": src, "records": recs}, table(recs, args.repeats, src),
           args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
