"""``average``: the element-wise mean of a run's model weights over chosen checkpoints,
written as a checkpoint (any backend) or exported as safetensors."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from cloudckpt.cli.convert_cmds import parse_size, tensors_for_safetensors, write_safetensors
from cloudckpt.cli.output import human, print_json
from cloudckpt.cli.session import options_arg
from cloudckpt.errors import InvalidArgument

__all__ = ["register"]

_EPILOG = """examples:
  cloudckpt average s3://bucket/runs/exp1 s3://bucket/avg --best 3 --metric val_loss
  cloudckpt average ./run ./avg --steps 800,900,1000
  cloudckpt average ./run avg.safetensors --best 5 --metric acc --mode max --format safetensors"""


def _steps(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of steps: {text!r}") from None


def register(sub: Any) -> None:
    p = sub.add_parser(
        "average", help="average the model weights of a run's best-K or listed checkpoints",
        description="Element-wise mean of one object's tensors (default: the model) over "
                    "checkpoints of a CheckpointManager run, streamed tensor by tensor "
                    "(fp32/fp64 accumulation, cast back). Integer and bool tensors must be "
                    "equal in every input. Writes a checkpoint at OUT, or safetensors.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="the run root (as given to CheckpointManager)")
    p.add_argument("out", help="output checkpoint URI; with --format safetensors a local "
                               ".safetensors file or a directory (sharded)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", type=int, metavar="K", help="the K best checkpoints by --metric")
    which.add_argument("--steps", type=_steps, metavar="A,B,C", help="these steps")
    p.add_argument("--metric", help="metric to rank by (with --best)")
    p.add_argument("--mode", choices=["min", "max"], default="min",
                   help="min: lower is better (default), max: higher is better")
    p.add_argument("--object", default="model", dest="obj", metavar="NAME",
                   help="object to average, as named in mgr.save (default: model), or a path "
                        "below one (ema/shadow)")
    p.add_argument("--format", choices=["checkpoint", "safetensors"], default="checkpoint",
                   help="checkpoint (default): a cloudckpt checkpoint at OUT")
    p.add_argument("--max-shard-size", default="5GB",
                   help="with --format safetensors: shard above this size (default 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint at OUT")
    p.add_argument("--dst-storage-options", type=options_arg, default=None, metavar="JSON",
                   help="storage options for OUT, as JSON or @FILE (default: those of RUN)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_average)


def cmd_average(args: argparse.Namespace) -> int:
    from cloudckpt.engine.reader import load
    from cloudckpt.manager.average import average

    selection: dict[str, Any] = {"steps": args.steps, "best": args.best, "metric": args.metric,
                                 "mode": args.mode, "obj": args.obj,
                                 "storage_options": args.storage_options}
    if args.format == "checkpoint":
        info = average(args.run, args.out, overwrite=args.overwrite,
                       out_storage_options=args.dst_storage_options, **selection)
        files = [info.uri]
    else:
        out = Path(args.out)
        if out.exists() and not args.overwrite and (out.is_file() or any(out.iterdir())):
            raise InvalidArgument(f"{out} exists; pass --overwrite to replace it")
        max_shard = parse_size(args.max_shard_size)
        with tempfile.TemporaryDirectory(prefix="cloudckpt-average-") as tmp:
            info = average(args.run, Path(tmp) / "avg", **selection)
            tensors, _dropped = tensors_for_safetensors(load(Path(tmp) / "avg"))
            files = [str(f) for f in write_safetensors(tensors, out, max_shard)]
    if args.json:
        print_json({"out": files, "steps": list(info.steps), "object": info.obj,
                    "tensors": info.tensors, "raw_bytes": info.raw_bytes,
                    "seconds": round(info.seconds, 3)})
    else:
        print(f"averaged {args.obj} of steps {', '.join(map(str, info.steps))} -> "
              f"{', '.join(files)} ({info.tensors} tensors, {human(info.raw_bytes)})")
    return 0
