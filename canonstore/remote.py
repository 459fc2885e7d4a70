"""Zarr stores as sources, local or on S3-compatible object storage: their locations, client and cheap identity.

An `s3://bucket/prefix` source stays text (`URL`): a `Path` would fold its `//` into `s3:/bucket`. Object storage
is reached through obstore (Rust's `object_store`, as zarr's own `zarr.storage.ObjectStore` wraps it), configured
only by the standard environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...), so AWS, MinIO, Ceph and any S3 clone work alike.

A Zarr store's identity is cheap: the sha256 of its metadata documents and of its listing (every object's name,
size and stamp: ETag and last-modified time on S3, mtime_ns locally), never of every chunk's bytes: a chunk
added, removed or rewritten, even in place to the same size, changes it.

    zarr_identity(Path("era5.zarr"))     # -> {'path': '/abs/era5.zarr', 'size': ..., 'objects': ..., 'sha256': ...}
    zarr_identity(URL("s3://bucket/era5.zarr"))
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

from canonstore.errors import SourceError, first_line

SCHEMES = ("s3://",)
METADATA = ("zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata")  # v3 and v2 documents
# The first contact (listing, metadata) fails fast: a wrong endpoint or a missing bucket is an error in seconds.
# Bulk transfers (a build's chunk reads, a publish's uploads and copies, pull's ranges) keep object_store's own
# retries (10 within 3 minutes, backing off), so one 503 SlowDown does not end an hours-long build.
RETRY = {"max_retries": 2, "retry_timeout": dt.timedelta(seconds=20)}


class URL(str):
    """An object-storage location kept as text; `name` and `suffix` as a Path's, for messages and `kind_of`."""

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rindex(".") :] if "." in name.lstrip(".") else ""

    @property
    def bucket(self) -> str:
        return self.split("://", 1)[1].split("/", 1)[0]

    @property
    def prefix(self) -> str:
        rest = self.split("://", 1)[1]
        return rest.split("/", 1)[1].strip("/") if "/" in rest else ""


def is_url(location) -> bool:
    """Whether `location` names object storage (`s3://...`, or any `scheme://`) rather than a local path."""
    return isinstance(location, str) and "://" in location


def is_zarr_dir(path) -> bool:
    """Whether local `path` is a Zarr store (v3 `zarr.json`, v2 `.zgroup`/`.zmetadata`/`.zarray`)."""
    return not is_url(path) and Path(path).is_dir() and any((Path(path) / m).is_file() for m in METADATA)


def s3_store(url: URL, patient: bool = False):
    """An obstore S3 store at `url`'s bucket and prefix, configured by the AWS_* environment variables; failing
    fast (`RETRY`) unless `patient` (bulk transfers: object_store's default retries)."""
    from obstore.store import S3Store

    if not url.startswith(SCHEMES):
        raise SourceError(
            f"{url}: only s3:// object storage is supported (any S3-compatible service: set AWS_ENDPOINT_URL; "
            "Google Cloud Storage has one at https://storage.googleapis.com with HMAC keys)"
        )
    # obstore reads every AWS_* variable itself (endpoint, region, keys, session token); AWS_ALLOW_HTTP is
    # repeated as a client option, where plain-http endpoints (MinIO, moto on 127.0.0.1) need it.
    client = {"allow_http": True} if os.environ.get("AWS_ALLOW_HTTP", "").lower() in ("1", "true") else {}
    try:
        retry = {} if patient else {"retry_config": RETRY}
        return S3Store(url.bucket, prefix=url.prefix or None, client_options=client, **retry)
    except Exception as exc:  # a malformed endpoint or region
        raise SourceError(f"{url}: cannot configure the S3 client from AWS_* variables: {first_line(exc)}") from None


def listing(location) -> list[tuple[str, int]]:
    """(name relative to the store, size in bytes) of every object of the Zarr store at `location`, sorted."""
    return [(name, size) for name, size, _ in stamped_listing(location)]


def stamped_listing(location) -> list[tuple[str, int, str]]:
    """`listing` with each object's stamp: its ETag and last-modified time on S3, its mtime_ns locally (a chunk
    rewritten in place to the same size changes it)."""
    if not is_url(location):
        root = Path(location)
        found = []
        for folder, _, files in os.walk(root):
            for f in files:
                st = Path(folder, f).stat()
                found.append((Path(folder, f).relative_to(root).as_posix(), st.st_size, str(st.st_mtime_ns)))
        return sorted(found)
    import obstore

    store = s3_store(URL(location))
    try:
        return sorted(
            (o["path"], int(o["size"]), f"{o.get('e_tag')} {o.get('last_modified')}")
            for batch in obstore.list(store)
            for o in batch
        )
    except Exception as exc:
        raise SourceError(remote_error(location, exc)) from None


def read_object(location, name: str) -> bytes:
    """The bytes of object `name` of the store at `location`."""
    if not is_url(location):
        return Path(location, name).read_bytes()
    import obstore

    try:
        return bytes(obstore.get(s3_store(URL(location)), name).bytes())
    except Exception as exc:
        raise SourceError(remote_error(location, exc)) from None


def zarr_identity(location) -> dict:
    """The record of a Zarr source: `{path, size, objects, sha256}`, sha256 of its metadata documents (the
    consolidated ones included) and of its stamped listing (`stamped_listing`). An empty or metadata-less
    location is refused, and so is stale consolidated metadata (`check_consolidated`), from the same documents."""
    found = stamped_listing(location)
    docs = [name for name, _, _ in found if name.rsplit("/", 1)[-1] in METADATA]
    if not docs:
        raise SourceError(
            f"{location}: not a Zarr store (no zarr.json, .zgroup or .zmetadata among its {len(found)} objects)"
        )
    digest = hashlib.sha256()
    for name, size, stamp in found:
        digest.update(f"{name}\t{size}\t{stamp}\n".encode())
    documents = {name: read_object(location, name) for name in docs}
    for name, raw in documents.items():
        digest.update(name.encode() + b"\0" + hashlib.sha256(raw).digest())
    check_consolidated(location, documents)
    where = str(location) if is_url(location) else str(Path(location).resolve())
    return {"path": where, "size": sum(s for _, s, _ in found), "objects": len(found), "sha256": digest.hexdigest()}


def check_consolidated(location, documents: dict[str, bytes]) -> None:
    """Refuse consolidated metadata (v2 `.zmetadata`, v3 the root zarr.json's `consolidated_metadata`) that is not
    the arrays' own documents (`documents`: name -> bytes, every metadata document of the store). xarray and zarr
    read only the consolidated copy: one left from before an append gives the old shape (the new steps missing
    without a word), one from before a rewrite other attributes (`scale_factor`), fill value or data type."""
    copy, own, where = _consolidated(documents)
    for name in sorted(set(copy) | set(own)) if copy else ():
        kept, now = copy.get(name), own.get(name)
        if name.rsplit("/", 1)[-1] == ".zattrs":  # v2 writers may leave out an empty .zattrs, on disk or in the copy
            kept, now = kept or {}, now or {}
        fields = _differing(name, kept, now)
        if not fields:
            continue
        if kept is None or now is None:
            said = f"{name} is not in {where}" if kept is None else f"{where} lists {name}, which is gone"
        else:
            said = f"'{fields[0]}' is {now.get(fields[0])!r} in {name} but {kept.get(fields[0])!r} in {where}"
        raise SourceError(
            f"{location}: array '{name.rsplit('/', 1)[0] if '/' in name else '/'}': the consolidated metadata is out "
            f"of date ({said}); xarray would read the stale copy: consolidate again (zarr.consolidate_metadata)"
        )


def _consolidated(documents: dict[str, bytes]) -> tuple[dict, dict, str]:
    """(consolidated copy, the documents themselves, where the copy is): name -> parsed document; no copy: {}."""
    if ".zmetadata" in documents:  # v2: keys as the documents' names
        copy = (_json(documents[".zmetadata"]) or {}).get("metadata") or {}
        own = {
            n: _json(raw) for n, raw in documents.items() if n.rsplit("/", 1)[-1] in (".zarray", ".zattrs", ".zgroup")
        }
        return copy, own, ".zmetadata"
    root = _json(documents.get("zarr.json", b"{}")) or {}
    copy = (root.get("consolidated_metadata") or {}).get("metadata") or {}
    own = {n: _json(raw) for n, raw in documents.items() if n.endswith("/zarr.json")}
    return {f"{n}/zarr.json": doc for n, doc in copy.items()}, own, "the root zarr.json's consolidated_metadata"


def _json(raw: bytes):
    try:
        return json.loads(raw)
    except ValueError:
        return None


# What a document says about the values a reader gets; the rest (codecs' defaults, chunk_key_encoding's default
# separator, an empty storage_transformers) is spelt differently by different writers and by zarr's consolidation
# of another writer's documents (tensorstore's "attributes" left out, zarr's copy {}): compared, it refused good stores.
_MEANING = {
    ".zarray": ("shape", "chunks", "dtype", "fill_value", "order", "compressor", "filters"),
    "zarr.json": ("node_type", "shape", "data_type", "chunk_grid", "fill_value", "dimension_names", "attributes"),
}


def _differing(name: str, kept: dict | None, now: dict | None) -> list[str]:
    """The fields of document `name` that say different things in the two copies (None: a copy is missing). A key
    set to null, one left out and an empty `{}` are alike; NaN fill values are equal (compared as JSON text)."""
    if kept is None or now is None:
        return [] if kept is now else ["(the whole document)"]
    keys = _MEANING.get(name.rsplit("/", 1)[-1]) or sorted(set(kept) | set(now) - {"consolidated_metadata"})
    return [k for k in keys if _text(kept.get(k)) != _text(now.get(k))]


def _text(value) -> str:
    return json.dumps(None if value == {} else value, sort_keys=True)


def remote_error(location, exc: BaseException) -> str:
    """One line for a failed object-storage request: what went wrong, in words, and the URL."""
    text = first_line(exc)
    low = f"{type(exc).__name__} {exc}".lower()
    if "nosuchbucket" in low or "bucket does not exist" in low:
        return f"{location}: bucket '{URL(location).bucket}' does not exist (or is not visible with these credentials)"
    if any(k in low for k in ("invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied", "forbidden", "403")):
        return (
            f"{location}: access denied: check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL ({text})"
        )
    if any(k in low for k in ("connect", "dns", "timed out", "timeout")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "AWS's default")
        return f"{location}: cannot reach the object store (AWS_ENDPOINT_URL={endpoint}): {text}"
    return f"{location}: object storage request failed: {text}"
