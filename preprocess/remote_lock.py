"""One publisher per store URL, across machines: a lock object next to the store, taken by a conditional write.

`build --out s3://b/p/name.zarr` (and `publish_url`) first creates `s3://b/p/name.zarr.canonstore-lock` with
S3's PUT If-None-Match: * (obstore's `mode="create"`; AWS S3 since 2024, MinIO, moto 5): exactly one of two
publishers at once succeeds. The object says who holds it (user, host, pid, when); it is deleted when the
publish ends, failed or not. A second publisher is refused in one line naming the URL and the holder.

A lock outlives its holder only if that was killed. It is never taken over silently:

* one left by this machine (same host) whose process is gone is removed, with a warning naming it (the machine's
  own lock, `upload.publish_lock`, is held first, so no publish of the URL from here is running);
* one from another machine is refused; past `LEASE` the refusal says it is probably stale. `--force-unlock`
  (`force_unlock=True`) removes it, with a warning naming the holder, or delete the object yourself.

    with remote_lock(Objects("s3://b/p"), "name.zarr"):     # -> refused: "s3://b/p/name.zarr: another publish ..."
        ...
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import logging
import os
import uuid

from canonstore.errors import StoreError
from canonstore.objects import Objects

logger = logging.getLogger(__name__)

SUFFIX = ".canonstore-lock"
LEASE = dt.timedelta(hours=24)  # a publish holding its lock longer than this is taken for a killed one (named so)


@contextlib.contextmanager
def remote_lock(objects: Objects, name: str, force_unlock: bool = False):
    """Hold the lock object of the store `name` under `objects` for the duration (see the module docstring)."""
    key, url = name + SUFFIX, objects.where(name)
    record = _record()
    if force_unlock and (held := _holder(objects, key)) is not None:
        logger.warning(f"{objects.where(key)}: removed by --force-unlock (it was held by {_describe(held)})")
        objects.delete([key])
    while not objects.create(key, json.dumps(record).encode()):
        held = _holder(objects, key)
        if held is None:  # released between the two requests: try again
            continue
        if not _left_here(held):
            raise StoreError(_refusal(url, objects.where(key), held))
        logger.warning(f"{objects.where(key)}: removed: left by a killed publish on this machine ({_describe(held)})")
        objects.delete([key])
    try:
        yield
    finally:
        held = _holder(objects, key)
        if held is not None and held.get("token") == record["token"]:  # never someone else's (after --force-unlock)
            objects.delete([key])


def _record() -> dict:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (some containers)
        user = str(os.getuid())
    return {
        "made_by": "canonstore",
        "kind": "publish-lock",
        "user": user,
        "host": os.uname().nodename,
        "pid": os.getpid(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "token": uuid.uuid4().hex,
    }


def _holder(objects: Objects, key: str) -> dict | None:
    """The lock's record; None when there is no lock; an unreadable one as {} (named as such, never removed)."""
    raw = objects.read(key)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _describe(held: dict) -> str:
    if held.get("made_by") != "canonstore":
        return "an object canonstore did not write"
    return f"{held.get('user')} on {held.get('host')}, pid {held.get('pid')}, since {held.get('created')}"


def _age(held: dict) -> dt.timedelta | None:
    try:
        return dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(held["created"])
    except (KeyError, TypeError, ValueError):
        return None


def _left_here(held: dict) -> bool:
    """Whether the lock was taken on this machine by a process that is gone."""
    if held.get("made_by") != "canonstore" or held.get("host") != os.uname().nodename:
        return False
    pid = held.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def _refusal(url: str, lock_url: str, held: dict) -> str:
    age = _age(held)
    stale = age is not None and age > LEASE
    hours = f" ({age.total_seconds() / 3600:.1f} h ago)" if age is not None else ""
    why = (
        f"older than the {LEASE.total_seconds() / 3600:g} h lease, probably left by a killed build"
        if stale
        else "wait for it to finish"
    )
    return (
        f"{url}: another publish holds {lock_url} ({_describe(held)}{hours}); {why}; if no build of it is "
        "running, build again with --force-unlock (or delete that object)"
    )
