"""``export`` to safetensors (single file or an HF-style sharded set) or a ``torch.save`` file,
and ``import`` from those formats or an HF model directory."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudckpt.cli.inspect_cmds import flatten
from cloudckpt.cli.output import human
from cloudckpt.cli.targets import checkpoint_store
from cloudckpt.errors import CloudckptError, InvalidArgument
from cloudckpt.storage.backends.local import fsync_path

if TYPE_CHECKING:
    import torch

__all__ = ["register"]

_RAW = argparse.RawDescriptionHelpFormatter
_EXPORT_EPILOG = """examples:
  cloudckpt export s3://bucket/runs/exp1 model.safetensors --inference
  cloudckpt export s3://bucket/runs/exp1 hf-dir/ --inference --max-shard-size 2GB
  cloudckpt export s3://bucket/runs/exp1 --step 200 full.pt      (everything, torch.save)
  cloudckpt export s3://bucket/runs/exp1 ema.safetensors --ema

A .pt export holds the whole training state and 'cloudckpt import' reads it back unchanged.
safetensors holds tensors only (other values are left out, with a note)."""
_IMPORT_EPILOG = """examples:
  cloudckpt import model.safetensors s3://bucket/ckpts/base
  cloudckpt import hf-dir/ s3://bucket/ckpts/base          (model.safetensors[.index.json])
  cloudckpt import full.pt ./restored --overwrite          (a cloudckpt export, round trip)

torch files are read with torch.load(weights_only=True) plus numpy arrays (no code runs)."""

_TRAINING_KEYS = {"optimizer", "optimizers", "optimizer_states", "scheduler", "lr_scheduler",
                  "lr_schedulers", "scaler", "rng", "rng_state", "loops", "callbacks"}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?$", re.IGNORECASE)


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="write a checkpoint as safetensors or a torch.save file",
                       epilog=_EXPORT_EPILOG, formatter_class=_RAW)
    p.add_argument("uri", help="one checkpoint, or a run root (then --step or the latest)")
    p.add_argument("out", help="a .safetensors / .pt file, or a directory for sharded safetensors")
    p.add_argument("--format", choices=["safetensors", "torch"], default=None,
                   help="default: from OUT's suffix (.pt/.pth/.bin: torch), else safetensors")
    p.add_argument("--step", type=int, help="step of a run root (default: latest)")
    p.add_argument("--inference", action="store_true",
                   help="model weights only: drop optimizer, scheduler, RNG and training state")
    p.add_argument("--ema", action="store_true",
                   help="the EMA weights saved with mgr.save(..., ema=cloudckpt.EMA(model))")
    p.add_argument("--max-shard-size", default="5GB",
                   help="shard safetensors above this size (HF index json); default 5GB")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="store a torch.save / safetensors file or HF model dir",
                       epilog=_IMPORT_EPILOG, formatter_class=_RAW)
    p.add_argument("src", help="a .safetensors or torch.save file, or a model directory")
    p.add_argument("uri", help="where to write the checkpoint (any backend)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a checkpoint already at URI (default: refuse, exit 6)")
    p.set_defaults(func=cmd_import)


def parse_size(text: str) -> int:
    """``"5GB"`` -> 5e9, ``"512MiB"`` -> 512 * 2**20.

    Raises:
        InvalidArgument: not a size.
    """
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise InvalidArgument(f"not a size: {text!r} (e.g. 5GB, 500MiB)")
    unit = (m.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = "BKMGT".index(unit[0])
    return int(float(m.group(1)) * base**power)


def _inference_view(state: Any) -> Any:
    from cloudckpt.manager.state import TRAINING_FORMAT  # torch: loaded with the state

    if isinstance(state, dict) and state.get("format") == TRAINING_FORMAT:
        objects = state.get("objects", {})
        if "model" in objects:
            return objects["model"]
        return {k: v for k, v in objects.items() if k not in _TRAINING_KEYS}
    if isinstance(state, dict):
        for k in ("model", "state_dict", "module"):
            if isinstance(state.get(k), dict):
                return state[k]
        return {k: v for k, v in state.items() if k not in _TRAINING_KEYS}
    return state


def tensors_for_safetensors(state: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of ``state`` under dotted names (numpy arrays converted, tied tensors
    copied), and the key paths of the non-tensor values left out."""
    import numpy as np
    import torch

    flat = flatten(state)
    tensors: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    seen: set[tuple[int, Any]] = set()
    for k, v in flat.items():
        name = k.replace("/", ".")
        if hasattr(v, "__array__") and not isinstance(v, torch.Tensor):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if not isinstance(v, torch.Tensor):
            dropped.append(k)
            continue
        v = v.contiguous()
        ident = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else (0, id(v))
        if ident in seen:  # safetensors refuses shared memory: tied weights become copies
            v = v.clone()
        seen.add(ident)
        tensors[name] = v
    return tensors, dropped


def write_safetensors(tensors: dict[str, torch.Tensor], out: Path, max_shard: int) -> list[Path]:
    """Write ``tensors`` to ``out`` (a .safetensors file, or a directory: one file or shards of
    at most ``max_shard`` bytes with an HF index json); returns the files written.

    Raises:
        InvalidArgument: a single file would exceed ``max_shard``.
    """
    from safetensors.torch import save_file

    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if out.suffix == ".safetensors":
        if total > max_shard:
            raise InvalidArgument(f"{human(total)} exceeds --max-shard-size; give a directory as "
                                  "OUT to write a sharded set")
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out), metadata={"format": "pt"})
        fsync_path(out)
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    if total <= max_shard:
        path = out / "model.safetensors"
        save_file(tensors, str(path), metadata={"format": "pt"})
        fsync_path(path)
        return [path]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        path = out / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        fsync_path(path)
        paths.append(path)
        weight_map.update({name: path.name for name in shard})
    index = out / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                indent=2))
    return [*paths, index]


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from cloudckpt.engine.reader import load
    from cloudckpt.manager.ema import load_ema_weights

    store = checkpoint_store(args.uri, args.storage_options, args.step)
    state = load_ema_weights(store) if args.ema else load(store)
    if args.inference:
        state = _inference_view(state)
    out = Path(args.out)
    fmt = args.format or ("torch" if out.suffix in (".pt", ".pth", ".bin") else "safetensors")
    if fmt == "torch":
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        print(f"exported {store.uri} -> {out} (torch.save)")
        return 0
    tensors, dropped = tensors_for_safetensors(state)
    if dropped:
        print(f"note: safetensors holds tensors only; left out {len(dropped)} non-tensor "
              f"value(s): {', '.join(dropped[:8])}{' ...' if len(dropped) > 8 else ''}",
              file=sys.stderr)
    files = write_safetensors(tensors, out, parse_size(args.max_shard_size))
    print(f"exported {store.uri} -> {', '.join(str(p) for p in files)} ({len(tensors)} tensors)")
    return 0


def _numpy_globals() -> list[Any]:
    """What a torch.save file of a cloudckpt export needs besides tensors: numpy arrays of
    numeric dtypes (the RNG states), as torch's weights_only documentation lists them."""
    import importlib

    import numpy as np

    try:  # numpy >= 2 (numpy.core still resolves there, with a deprecation warning)
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1.x
        multiarray = importlib.import_module("numpy.core.multiarray")
    kinds = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
             np.uint64, np.float16, np.float32, np.float64, np.complex64, np.complex128)
    return [multiarray._reconstruct, np.ndarray, np.dtype, *(type(np.dtype(k)) for k in kinds)]


def _read_torch_file(src: Path) -> Any:
    import torch

    # weights_only: no arbitrary pickled objects, no code execution; numpy arrays allowed
    with torch.serialization.safe_globals(_numpy_globals()):
        return torch.load(src, map_location="cpu", weights_only=True)


def _read_source(src: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    if src.is_dir():
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = src / index_name
            if index.exists():
                weight_map = json.loads(index.read_text()).get("weight_map")
                if not isinstance(weight_map, dict):
                    raise InvalidArgument(f"{index}: no 'weight_map' object")
                state: dict[str, Any] = {}
                for name in sorted(set(map(str, weight_map.values()))):
                    if Path(name).name != name:
                        raise InvalidArgument(f"{index}: shard name {name!r} is not a file name")
                    state.update(_read_source(src / name))
                return state
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (src / name).exists():
                return _read_source(src / name)
        raise InvalidArgument(f"{src}: no model.safetensors, pytorch_model.bin or index json")
    if src.suffix == ".safetensors":
        return dict(load_file(str(src)))
    loaded = _read_torch_file(src)
    if not isinstance(loaded, dict):
        raise InvalidArgument(f"{src}: expected a dict of tensors, got {type(loaded).__name__}")
    return loaded


def cmd_import(args: argparse.Namespace) -> int:
    from cloudckpt.engine.writer import save

    src = Path(args.src)
    if not src.exists():
        raise InvalidArgument(f"{src} does not exist")
    try:
        state = _read_source(src)
    except (CloudckptError, OSError):
        raise
    except Exception as e:  # unpickling refused, a damaged safetensors header, bad json...
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InvalidArgument(f"{src}: cannot be imported: {type(e).__name__}"
                              + (f": {detail}" if detail else "")) from e
    info = save(state, args.uri, storage_options=args.storage_options, overwrite=args.overwrite)
    print(f"imported {src} -> {info.uri} ({info.tensors} tensors, {human(info.raw_bytes)} raw, "
          f"{human(info.stored_bytes)} stored)")
    return 0
