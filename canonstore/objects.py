"""Many objects at once under one S3 URL: list, read, put, copy, delete and ranged reads, concurrently.

`Objects(url)` is obstore's client at `url` (`canonstore.remote.s3_store`: the AWS_* variables); keys are
relative to it. Each call runs its requests on asyncio, at most `limit` at a time, and turns any failure into
one `StoreError` line naming the URL and what went wrong (`canonstore.remote.remote_error`).

    objects = Objects("s3://bucket/era5")
    objects.put_files([("a.zarr/zarr.json", Path("a.zarr/zarr.json"))])
    objects.copy([("a.zarr.partial/data/c/0/0/0", "a.zarr/data/c/0/0/0")])
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from canonstore.errors import StoreError
from canonstore.remote import URL, remote_error, s3_store

LIMIT = 16  # requests in flight: enough to fill a link to S3, few enough for a laptop's or moto's sockets


def run_async(coro):
    """Run `coro` to completion, also from code that already runs an event loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def bounded(items: Iterable, call: Callable[..., Awaitable], limit: int = LIMIT) -> list:
    """`call(item)` for every item, at most `limit` at a time; results in the items' order."""
    gate = asyncio.Semaphore(limit)

    async def one(item):
        async with gate:
            return await call(item)

    return list(await asyncio.gather(*(one(item) for item in items)))


class Objects:
    """The objects under one S3 URL (see the module docstring)."""

    def __init__(self, url: str):
        self.url = URL(url)
        self.store = s3_store(self.url)  # listing and metadata: the first contact, failing fast
        self.bulk = s3_store(self.url, patient=True)  # uploads, copies, deletes and ranged reads: retried

    def where(self, key: str = "") -> str:
        return f"{self.url.rstrip('/')}/{key}" if key else str(self.url)

    def fail(self, exc: BaseException, key: str = "") -> StoreError:
        return StoreError(remote_error(self.where(key), exc))

    def list(self, under: str = "") -> dict[str, int]:
        """{key: size} of every object under `under` (a key prefix ending in '/', or '' for all)."""
        import obstore

        try:
            return {o["path"]: int(o["size"]) for batch in obstore.list(self.store, under or None) for o in batch}
        except Exception as exc:
            raise self.fail(exc, under) from None

    def read(self, key: str) -> bytes | None:
        """The bytes of object `key`, or None when there is none."""
        import obstore

        try:
            return bytes(obstore.get(self.store, key).bytes())
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self.fail(exc, key) from None

    def put(self, key: str, data: bytes) -> None:
        self.put_files([(key, data)])

    def create(self, key: str, data: bytes) -> bool:
        """Write object `key` only if there is none (S3's conditional PUT, If-None-Match: *): True if this call
        created it, False if one was there."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            obstore.put(self.store, key, data, mode="create")
        except (AlreadyExistsError, PreconditionError):
            return False
        except Exception as exc:
            raise self.fail(exc, key) from None
        return True

    def put_files(self, pairs: Iterable[tuple[str, Path | bytes]], limit: int = LIMIT) -> None:
        """Upload each (key, local file or bytes); obstore splits large files into a multipart upload, which
        appears whole or not at all."""
        import obstore

        async def put(pair):
            key, source = pair
            try:
                await obstore.put_async(self.bulk, key, source)
            except Exception as exc:
                raise self.fail(exc, key) from None

        run_async(bounded(list(pairs), put, limit))

    def copy(self, pairs: Iterable[tuple[str, str]], limit: int = LIMIT) -> None:
        """Server-side copies (from_key, to_key): the bytes never pass through this machine."""
        import obstore

        async def copy(pair):
            try:
                await obstore.copy_async(self.bulk, pair[0], pair[1])
            except Exception as exc:
                raise self.fail(exc, pair[0]) from None

        run_async(bounded(list(pairs), copy, limit))

    def delete(self, keys: Iterable[str], limit: int = LIMIT) -> None:
        """Delete `keys` (an absent one is no error), in the order given when `limit` is 1."""
        import obstore

        async def delete(key):
            try:
                await obstore.delete_async(self.bulk, key)
            except FileNotFoundError:
                pass
            except Exception as exc:
                raise self.fail(exc, key) from None

        run_async(bounded(list(keys), delete, limit))

    async def stream(self, key: str, chunk: int = 8 << 20, span: tuple[int, int] | None = None):
        """The bytes of object `key` (or of its bytes [start, stop) = `span`) in one GET, as they arrive, in
        pieces of about `chunk` bytes (async): never more than a piece in memory, however large the object."""
        import obstore

        try:
            result = await obstore.get_async(self.bulk, key, options={} if span is None else {"range": span})
            async for piece in result.stream(min_chunk_size=chunk):
                yield piece
        except Exception as exc:
            raise self.fail(exc, key) from None


def parent_and_name(url: str) -> tuple[str, str]:
    """`s3://b/p/name.zarr` -> (`s3://b/p`, `name.zarr`): a store and its staging prefix share the parent."""
    url = URL(str(url).rstrip("/"))
    if not url.prefix:
        raise StoreError(f"{url}: a store needs a name under the bucket (s3://{url.bucket}/name.zarr)")
    return url[: -len(url.name) - 1], url.name
