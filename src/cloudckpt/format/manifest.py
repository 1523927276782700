"""The checkpoint manifest: frozen dataclasses <-> versioned, checksummed JSON. Pure data.

File layout (``manifest.json``)::

    {"format":"cloudckpt-manifest","format_version":2,"body_length":N,"body_sha256":"..."}\\n
    <body: N bytes of compact JSON>

The header line makes every single-byte change detectable: the body is covered by SHA-256, and
the header's own fields are validated exactly. Unknown versions, fields, tags or codecs are
rejected with :class:`~cloudckpt.errors.CorruptCheckpoint`, never dropped.

A chunk's ``object`` is a key relative to the checkpoint root (``data/<save_id>/<n>.bin``), or
``@<sibling>/<key>`` for an object owned by a sibling checkpoint under the same parent prefix:
the hook for incremental saves that reuse unchanged chunks.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from cloudckpt._version import __version__
from cloudckpt.errors import CorruptCheckpoint, UntrustedCheckpoint
from cloudckpt.format.codecs import DELTA_CODECS, is_known_codec
from cloudckpt.format.keys import validate_key
from cloudckpt.format.signing import DOMAIN, Signer, Verifier

__all__ = [
    "FORMAT_VERSION",
    "ChunkRecord",
    "Manifest",
    "Segment",
    "TensorRecord",
    "decode_manifest",
    "encode_manifest",
    "new_manifest",
]

FORMAT_NAME = "cloudckpt-manifest"
FORMAT_VERSION = 2
#: versions this code reads: 1 (xxh3-64 digests), 2 (xxh3-128 digests, chunk references)
READABLE_VERSIONS = (1, 2)
_DIGEST = re.compile(r"^(?:[0-9a-f]{16}|[0-9a-f]{32})$")  # xxh3-64 (v1) or xxh3-128
_DEVICE = re.compile(r"^[a-z][a-z0-9_]{0,15}(:[0-9]{1,5})?$")
_DTYPE = re.compile(r"^[A-Za-z0-9_<>|=]{1,32}$")
#: Format limits: a manifest, a chunk and the dimensions of a tensor never exceed these.
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
MAX_CHUNK_BYTES = 1 << 31
MAX_DIMS = 64
#: a delta chunk's chain of bases is at most this long
MAX_CHAIN = 64
_SIBLING = re.compile(r"^@([A-Za-z0-9._=-]+)/(.+)$")


@dataclass(frozen=True)
class ChunkRecord:
    """One encoded chunk: where its stored bytes live and how to check and decode them."""

    object: str
    offset: int
    stored_size: int
    raw_size: int
    codec: str
    itemsize: int
    stored_xxh3: str
    raw_xxh3: str
    #: a delta (codec in DELTA_CODECS): index, in the same manifest, of the chunk whose raw
    #: bytes it is XORed with
    base: int | None = None


@dataclass(frozen=True)
class Segment:
    """``length`` bytes of a tensor, found at ``offset`` of chunk number ``chunk`` (decoded)."""

    chunk: int
    offset: int
    length: int


@dataclass(frozen=True)
class TensorRecord:
    """One tensor or array leaf. ``path`` is its key path, for messages; ``device`` where it
    lived when saved. Its bytes are the concatenation of its segments, in order."""

    path: str
    kind: str  # "torch" or "numpy"
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    device: str
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class Manifest:
    """Everything needed to load a checkpoint, without reading tensor data."""

    save_id: str
    created: str
    library_version: str
    tree: Any
    tensors: tuple[TensorRecord, ...]
    chunks: tuple[ChunkRecord, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    #: ``(alg, key_id)`` of the header's signature when there is one (not part of the body)
    signature: tuple[str, str] | None = field(default=None, compare=False)
    #: whether that signature was checked against a verification key and matched
    signature_verified: bool = field(default=False, compare=False)

    @property
    def raw_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def stored_bytes(self) -> int:
        return sum(c.stored_size for c in self.chunks)

    @property
    def added_bytes(self) -> int:
        """Stored bytes of the distinct chunks in this checkpoint's own data objects: what
        this save uploaded."""
        return sum(c.stored_size for c in self._distinct_chunks() if not c.object.startswith("@"))

    @property
    def shared_bytes(self) -> int:
        """Stored bytes of the distinct chunks referenced in other checkpoints' objects
        (``@sibling/...``): what this save did not upload again."""
        return sum(c.stored_size for c in self._distinct_chunks() if c.object.startswith("@"))

    def _distinct_chunks(self) -> list[ChunkRecord]:
        return list({(c.object, c.offset): c for c in self.chunks}.values())

    @property
    def objects(self) -> list[str]:
        """Distinct data objects, in first-use order."""
        return list(dict.fromkeys(c.object for c in self.chunks))


def new_manifest(save_id: str, tree: Any, tensors: tuple[TensorRecord, ...],
                 chunks: tuple[ChunkRecord, ...], metadata: Mapping[str, Any]) -> Manifest:
    """A manifest for a save committed now by this version of cloudckpt. Pure; any caller."""
    return Manifest(save_id=save_id, created=datetime.now(timezone.utc).isoformat(),
                    library_version=__version__, tree=tree, tensors=tensors, chunks=chunks,
                    metadata=metadata)


def encode_manifest(m: Manifest, signer: Signer | None = None) -> bytes:
    """Serialise ``m`` (header line + body), signed by ``signer`` when given."""
    body = json.dumps({
        "save_id": m.save_id,
        "created": m.created,
        "library_version": m.library_version,
        "metadata": m.metadata,
        "tree": m.tree,
        "tensors": [[t.path, t.kind, t.dtype, list(t.shape), t.nbytes, t.device,
                     [[s.chunk, s.offset, s.length] for s in t.segments]] for t in m.tensors],
        "chunks": [[c.object, c.offset, c.stored_size, c.raw_size, c.codec, c.itemsize,
                    c.stored_xxh3, c.raw_xxh3, *(() if c.base is None else (c.base,))]
                   for c in m.chunks],
        "totals": {"raw_bytes": m.raw_bytes, "stored_bytes": m.stored_bytes,
                   "tensors": len(m.tensors), "chunks": len(m.chunks)},
    }, separators=(",", ":"), allow_nan=False, ensure_ascii=True).encode()
    head: dict[str, Any] = {"format": FORMAT_NAME, "format_version": m.format_version,
                            "body_length": len(body),
                            "body_sha256": hashlib.sha256(body).hexdigest()}
    if signer is not None:
        head["signature"] = {"alg": signer.alg, "key_id": signer.key_id,
                             "value": signer.sign(DOMAIN + body).hex()}
    header = json.dumps(head, separators=(",", ":")).encode()
    return header + b"\n" + body


def _fail(msg: str) -> CorruptCheckpoint:
    return CorruptCheckpoint(f"invalid manifest: {msg}")


def _int(v: Any, what: str, minimum: int = 0) -> int:
    if type(v) is not int or v < minimum:
        raise _fail(f"{what} must be an integer >= {minimum}, got {v!r}")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise _fail(f"{what} must be a string, got {v!r}")
    return v


def _exact_keys(d: Any, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise _fail(f"{what} must be an object")
    if set(d) != keys:
        extra, missing = sorted(set(d) - keys), sorted(keys - set(d))
        raise _fail(f"{what}: unknown fields {extra}, missing fields {missing}")
    return d


def check_object_ref(ref: str) -> str:
    """Validate a chunk's object reference (own key, or ``@sibling/key``)."""
    m = _SIBLING.match(ref)
    try:
        validate_key(m.group(2) if m else ref)
    except ValueError as e:
        raise _fail(f"unsafe object name {ref!r}") from e
    if m and m.group(1) in (".", ".."):
        raise _fail(f"unsafe sibling name in {ref!r}")
    return ref


def _chunk(v: Any, i: int) -> ChunkRecord:
    if not isinstance(v, list) or len(v) not in (8, 9):
        raise _fail(f"chunk {i} must be an 8- or 9-element list")
    c = ChunkRecord(check_object_ref(_str(v[0], "chunk object")), _int(v[1], "chunk offset"),
                    _int(v[2], "chunk stored_size"), _int(v[3], "chunk raw_size"),
                    _str(v[4], "chunk codec"), _int(v[5], "chunk itemsize", 1),
                    _str(v[6], "stored checksum"), _str(v[7], "raw checksum"),
                    _int(v[8], "chunk base") if len(v) == 9 else None)
    if (c.base is not None) != (c.codec in DELTA_CODECS):
        raise _fail(f"chunk {i}: a delta codec needs a base chunk, and only a delta has one")
    if max(c.raw_size, c.stored_size) > MAX_CHUNK_BYTES:
        raise _fail(f"chunk {i} is larger than the format allows ({MAX_CHUNK_BYTES} bytes)")
    if not is_known_codec(c.codec):
        raise _fail(f"chunk {i} has unknown codec {c.codec!r}")
    if not (_DIGEST.match(c.stored_xxh3) and _DIGEST.match(c.raw_xxh3)):
        raise _fail(f"chunk {i} has malformed checksums")
    return c


def _check_chains(chunks: tuple[ChunkRecord, ...]) -> None:
    """Every delta's chain of bases stays inside the manifest, has no cycle, matches in size
    and ends at a full chunk within MAX_CHAIN links."""
    for i, c in enumerate(chunks):
        cur, links = c, 0
        while cur.base is not None:
            if cur.base >= len(chunks) or chunks[cur.base].raw_size != cur.raw_size:
                raise _fail(f"chunk {i}: its base is missing or of another size")
            cur, links = chunks[cur.base], links + 1
            if links > MAX_CHAIN:
                raise _fail(f"chunk {i}: more than {MAX_CHAIN} delta links (or a cycle)")


def _tensor(v: Any, i: int, chunks: tuple[ChunkRecord, ...]) -> TensorRecord:
    if not isinstance(v, list) or len(v) != 7:
        raise _fail(f"tensor {i} must be a 7-element list")
    kind = _str(v[1], "tensor kind")
    if kind not in ("torch", "numpy"):
        raise _fail(f"tensor {i} has unknown kind {kind!r}")
    if not isinstance(v[3], list) or not isinstance(v[6], list):
        raise _fail(f"tensor {i} shape/segments must be lists")
    if len(v[3]) > MAX_DIMS:
        raise _fail(f"tensor {i} has more than {MAX_DIMS} dimensions")
    segs = []
    for s in v[6]:
        if not isinstance(s, list) or len(s) != 3:
            raise _fail(f"tensor {i} has a malformed segment")
        seg = Segment(_int(s[0], "segment chunk"), _int(s[1], "segment offset"),
                      _int(s[2], "segment length"))
        if seg.chunk >= len(chunks) or seg.offset + seg.length > chunks[seg.chunk].raw_size:
            raise _fail(f"tensor {i} segment points outside its chunk")
        segs.append(seg)
    t = TensorRecord(_str(v[0], "tensor path"), kind, _str(v[2], "tensor dtype"),
                     tuple(_int(d, "tensor dim") for d in v[3]), _int(v[4], "tensor nbytes"),
                     _str(v[5], "tensor device"), tuple(segs))
    if not _DEVICE.match(t.device) or not _DTYPE.match(t.dtype):
        raise _fail(f"tensor {i} has a malformed device {t.device!r} or dtype {t.dtype!r}")
    if sum(s.length for s in t.segments) != t.nbytes:
        raise _fail(f"tensor {t.path} segments do not add up to {t.nbytes} bytes")
    return t


def _check_signature(header: dict[str, Any], body: bytes,
                     verifier: Verifier | None) -> tuple[tuple[str, str] | None, bool]:
    sig = header.get("signature")
    if sig is None:
        if verifier is not None:
            raise UntrustedCheckpoint("manifest is not signed, and a verification key is set")
        return None, False
    sig = _exact_keys(sig, {"alg", "key_id", "value"}, "signature")
    alg, key_id, value = (_str(sig[k], f"signature {k}") for k in ("alg", "key_id", "value"))
    if len(alg) > 64 or len(key_id) > 256 or len(value) > 1024:
        raise _fail("signature fields are too long")
    if verifier is None:
        return (alg, key_id), False
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise UntrustedCheckpoint("manifest signature is not hex") from None
    if not verifier.verify(alg, key_id, DOMAIN + body, raw):
        raise UntrustedCheckpoint(f"manifest signature ({alg}, key {key_id!r}) does not verify "
                                  "with the configured key: forged or signed by another key")
    return (alg, key_id), True


def decode_manifest(data: bytes, verifier: Verifier | None = None) -> Manifest:
    """Parse and validate a manifest file; with ``verifier``, also require a valid signature.

    Raises:
        UntrustedCheckpoint: ``verifier`` given and the manifest is unsigned or its signature
            does not verify.
        CorruptCheckpoint: bad checksum, unknown format version, unknown or missing fields,
            values of the wrong type, references outside the checkpoint.
    """
    head, sep, body = data.partition(b"\n")
    if not sep:
        raise _fail("no header line")
    try:
        header = json.loads(head)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise _fail("header is not JSON") from e
    if isinstance(header, dict) and header.get("format") == FORMAT_NAME and (
            isinstance(header.get("format_version"), int)
            and header["format_version"] > FORMAT_VERSION):
        raise CorruptCheckpoint(
            f"manifest format version {header['format_version']} is newer than this cloudckpt "
            f"understands ({FORMAT_VERSION}); upgrade cloudckpt to load it")
    keys = {"format", "format_version", "body_length", "body_sha256"}
    if isinstance(header, dict) and "signature" in header:
        keys.add("signature")
    header = _exact_keys(header, keys, "header")
    if header["format"] != FORMAT_NAME or header["format_version"] not in READABLE_VERSIONS:
        raise _fail(f"unsupported format {header['format']!r} v{header['format_version']!r}")
    if header["body_length"] != len(body):
        raise _fail(f"body is {len(body)} bytes, header says {header['body_length']!r} (truncated?)")
    if hashlib.sha256(body).hexdigest() != header["body_sha256"]:
        raise _fail("body checksum mismatch")
    signature, verified = _check_signature(header, body, verifier)
    try:
        d = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise _fail("body is not JSON") from e
    d = _exact_keys(d, {"save_id", "created", "library_version", "metadata", "tree", "tensors",
                        "chunks", "totals"}, "body")
    if not isinstance(d["chunks"], list) or not isinstance(d["tensors"], list):
        raise _fail("chunks and tensors must be lists")
    chunks = tuple(_chunk(c, i) for i, c in enumerate(d["chunks"]))
    _check_chains(chunks)
    tensors = tuple(_tensor(t, i, chunks) for i, t in enumerate(d["tensors"]))
    if not isinstance(d["metadata"], dict):
        raise _fail("metadata must be an object")
    m = Manifest(save_id=_str(d["save_id"], "save_id"), created=_str(d["created"], "created"),
                 library_version=_str(d["library_version"], "library_version"), tree=d["tree"],
                 tensors=tensors, chunks=chunks, metadata=d["metadata"],
                 format_version=header["format_version"], signature=signature,
                 signature_verified=verified)
    totals = _exact_keys(d["totals"], {"raw_bytes", "stored_bytes", "tensors", "chunks"}, "totals")
    if totals != {"raw_bytes": m.raw_bytes, "stored_bytes": m.stored_bytes,
                  "tensors": len(tensors), "chunks": len(chunks)}:
        raise _fail("totals do not match the records")
    return m
