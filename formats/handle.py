"""The store a reader opened, held open: every later read comes from that store or is an error.

A rebuild or append publishes a new directory at the store's path by one swap and then deletes the
old one. A reader holds a descriptor of the directory it opened (`StoreHandle`), so that directory's
inode cannot be reused while the reader lives, and:

* opens every file relative to that descriptor, never following a symbolic link (a store's files are
  regular files inside it): a file it opens is always the opened store's, never the new store's;
* after each read, checks that the path still names that directory (`check`); once a rebuild has
  published, the next read that needs the store's files raises one line saying so, instead of
  returning a file of one build beside the statistics of another. What the reader already holds
  (a mapped shard, statistics it read) stays the old store's.

`CheckedStore` is the same for zarr and xarray (metadata, statistics, compressed chunks).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import stat
import weakref
from pathlib import Path, PurePosixPath

from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer.core import default_buffer_prototype
from zarr.storage import LocalStore

from canonstore.errors import StoreError
from canonstore.formats.manifest import MANIFEST


class StoreHandle:
    """A descriptor of the store directory at `path`, and the identity (device, inode) it had when opened."""

    def __init__(self, path: str | Path, identity: tuple[int, int] | None = None):
        self.path = Path(path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StoreError(f"{self.path}: no such store") from None
        except NotADirectoryError:
            raise StoreError(f"{self.path}: not a store (a store is a directory)") from None
        weakref.finalize(self, os.close, self.fd)
        now = _identity(os.fstat(self.fd))
        self.identity = identity or now
        self._stale = now != self.identity  # unpickled after a rebuild: the path names another store now

    def __getstate__(self) -> dict:
        return {"path": self.path, "identity": self.identity}  # a descriptor means nothing in another process

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["identity"])

    def check(self) -> None:
        """Raise StoreError if the path no longer names the directory this handle opened."""
        try:
            moved = self._stale or _identity(os.stat(self.path)) != self.identity
        except OSError:
            moved = True
        if moved:
            raise StoreError(
                f"{self.path} was rebuilt or replaced after it was opened; open it again "
                "(a reader never mixes two builds: what it read before is the old store's)"
            )

    def open_file(self, rel: str) -> int:
        """A read-only descriptor of the regular file `rel` (a '/' path inside the store), opened through
        the store's directory without following any symbolic link; the caller closes it."""
        parts = PurePosixPath(rel).parts
        opened, at = [], self.fd
        try:
            for part in parts[:-1]:
                at = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=at)
                opened.append(at)
            # O_NONBLOCK: a FIFO put in the store must not block the reader; it is refused below
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=at)
        except OSError as exc:
            self.check()  # a file gone because the store was rebuilt is said as such
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _has_link(self.path, parts):
                raise StoreError(
                    f"{self.path / rel}: a symbolic link in the store; a store's files are regular "
                    f"files inside it, and readers never follow links: run `canonstore verify "
                    f"{self.path}`"
                ) from None
            raise type(exc)(exc.errno, exc.strerror, str(self.path / rel)) from None
        finally:
            for d in opened:
                os.close(d)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError(
                f"{self.path / rel}: not a regular file; a store's files are regular files: run "
                f"`canonstore verify {self.path}`"
            )
        return fd

    def read(self, rel: str, start: int = 0, stop: int | None = None) -> bytes:
        """Bytes [start, stop) of the store file `rel` (to its end when `stop` is None; `start` < 0 counts
        from the end), then `check`: bytes returned are the opened store's."""
        fd = self.open_file(rel)
        try:
            size = os.fstat(fd).st_size
            start = max(0, size + start) if start < 0 else start
            parts, want = [], (size if stop is None else stop) - start
            while want > 0:  # one pread returns at most ~2 GiB
                part = os.pread(fd, min(want, 1 << 30), start)
                if not part:
                    break
                parts.append(part)
                start, want = start + len(part), want - len(part)
            data = b"".join(parts)
        finally:
            os.close(fd)
        self.check()
        return data


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _has_link(root: Path, parts: tuple[str, ...]) -> bool:
    path = root
    for part in parts:
        path = path / part
        if path.is_symlink():
            return True
    return False


class CheckedStore(LocalStore):
    """A read-only zarr LocalStore whose reads go through a `StoreHandle` (see the module docstring)."""

    def __init__(self, handle: StoreHandle, *, read_only: bool = True):
        super().__init__(handle.path, read_only=True)
        self.handle = handle
        self._files: dict | None = None

    def with_read_only(self, read_only: bool = False) -> CheckedStore:
        return type(self)(self.handle)

    async def get(self, key, prototype=None, byte_range=None):
        if not self._is_open:
            await self._open()
        return await asyncio.to_thread(self._get, key, prototype or default_buffer_prototype(), byte_range)

    async def get_partial_values(self, prototype, key_ranges):
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    def _get(self, key: str, prototype, byte_range):
        if byte_range is None:
            start, stop = 0, None
        elif isinstance(byte_range, RangeByteRequest):
            start, stop = byte_range.start, byte_range.end
        elif isinstance(byte_range, OffsetByteRequest):
            start, stop = byte_range.offset, None
        elif isinstance(byte_range, SuffixByteRequest):
            start, stop = -byte_range.suffix, None
        else:
            raise TypeError(f"unexpected byte range {byte_range!r}")
        try:
            return prototype.buffer.from_bytes(self.handle.read(key, start, stop))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            if key in self._listed():  # zarr would read a file of the store that is gone as NaN, the fill value
                raise StoreError(
                    f"{self.handle.path / key}: listed in the manifest but missing (Zarr would read it as the fill "
                    f"value, NaN); `canonstore verify {self.handle.path}` lists the damage; rebuild or pull the store"
                ) from None
            return None  # zarr's meaning of an absent key (it probes for documents a store need not have)

    def _listed(self) -> dict:
        """The files the opened store's manifest lists (read on the first absent key only)."""
        if self._files is None:
            try:
                self._files = json.loads(self.handle.read(MANIFEST)).get("files") or {}
            except (OSError, ValueError, AttributeError):
                self._files = {}  # no readable manifest: nothing to tell an absent key by (verify says why)
        return self._files
