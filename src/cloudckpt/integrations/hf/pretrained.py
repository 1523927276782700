"""Export a model (and its tokenizer or processor) to any URI as a directory that
``from_pretrained`` loads unchanged: :func:`export_pretrained`.

The files are written by the model's own ``save_pretrained`` (and the processing class's), so
they are exactly what ``from_pretrained`` expects whatever the model does (weight renames of
transformers 5, tied weights, shards and their index, ``generation_config.json``, remote-code
files, PEFT adapters). A local path or ``file://`` URI is written in place. Any other URI is
written into a temporary local directory first (free space: the size of the exported files),
then uploaded object by object in bounded parts (retried, time-bounded, each upload atomic):
weights and processor files first, ``config.json`` last, so a directory that has the new
``config.json`` has the new weights. Weight files of an earlier export at that URI that this
export did not write (``model-00003-of-00003.safetensors`` of a bigger model, a stale index)
are deleted, as ``save_pretrained`` does locally; nothing else there is touched.

Who calls: :meth:`CloudckptTrainer.save_model` for a URI, and users (a plain ``Trainer``'s
``save_model`` only writes local paths); main process only, any thread.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cloudckpt.errors import InvalidArgument
from cloudckpt.integrations.hf._names import CONFIG_FILE
from cloudckpt.storage import Store, open_store, parse_uri, stream_write

__all__ = ["export_pretrained"]

log = logging.getLogger("cloudckpt.integrations.hf")

_READ = 8 * 1024 * 1024
#: weight files ``save_pretrained`` writes (and deletes when stale): shards, indexes, adapters
_WEIGHTS_RE = re.compile(r"^(model|pytorch_model|adapter_model)(-\d{5}-of-\d{5})?"
                         r"\.(safetensors|bin)(\.index\.json)?$|^(model|pytorch_model)"
                         r"\.(safetensors|bin)\.index\.json$")


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(_READ):
            yield block


def _write_local(model: Any, processing_class: Any, path: str,
                 save_kwargs: Mapping[str, Any]) -> list[str]:
    if not callable(getattr(model, "save_pretrained", None)):
        raise InvalidArgument(f"{type(model).__name__} has no save_pretrained(): export_pretrained "
                              "needs a transformers PreTrainedModel (or a PEFT model)")
    if processing_class is not None and not callable(getattr(processing_class, "save_pretrained",
                                                             None)):
        raise InvalidArgument(f"processing_class {type(processing_class).__name__} has no "
                              "save_pretrained()")
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, **save_kwargs)
    if processing_class is not None:
        processing_class.save_pretrained(path)
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*") if p.is_file())


def _upload(tmp: Path, files: list[str], store: Store) -> None:
    """Upload ``files`` (relative to ``tmp``); config.json last; then drop stale weights."""
    ordered = sorted(files, key=lambda f: (f == CONFIG_FILE, f.endswith(".index.json"), f))
    written = set(files)
    for name in ordered:
        if name == CONFIG_FILE:  # the new weights are all in place: drop stale ones first
            stale = [o.key for o in store.list("") if "/" not in o.key
                     and _WEIGHTS_RE.match(o.key) and o.key not in written]
            if stale:
                log.info("deleting stale weight files of an earlier export at %s: %s",
                         store.uri, stale)
                store.delete_many(stale)
        stream_write(store, name, _chunks(tmp / name))


def export_pretrained(model: Any, uri: str | os.PathLike[str], *, processing_class: Any = None,
                      storage_options: Mapping[str, Any] | None = None,
                      **save_kwargs: Any) -> list[str]:
    """Write ``model`` (a ``PreTrainedModel``) with its ``config.json``, and
    ``processing_class`` (a tokenizer, image processor or processor) when given, to ``uri`` so
    that ``from_pretrained`` of that directory loads them unchanged (for a remote URI: after
    downloading it, or through a filesystem that mounts it). ``save_kwargs`` go to
    ``model.save_pretrained`` (``max_shard_size=``, ``state_dict=``...). Returns the URIs
    written. See the module docstring.

    Raises:
        InvalidArgument: ``model`` (or ``processing_class``) has no ``save_pretrained``.
        InvalidURI: ``uri`` is malformed (``s3:/bucket``: one slash).
        StorageError and subclasses: an upload failed (files uploaded before it stay).
        OSError: the local directory or temporary space cannot be written.
    """
    target = parse_uri(uri)
    if target.protocol == "file":
        files = _write_local(model, processing_class, target.prefix, save_kwargs)
        log.info("exported %s (%d files) to %s", type(model).__name__, len(files), target.prefix)
        return [os.path.join(target.prefix, f) for f in files]
    store = open_store(uri, storage_options=storage_options)
    with tempfile.TemporaryDirectory(prefix="cloudckpt-export-") as tmp:
        files = _write_local(model, processing_class, tmp, save_kwargs)
        _upload(Path(tmp), files, store)
    log.info("exported %s (%d files) to %s", type(model).__name__, len(files), store.uri)
    return [f"{store.uri.rstrip('/')}/{f}" for f in files]
