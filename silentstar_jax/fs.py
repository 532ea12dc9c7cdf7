"""Writing outputs so that a failed write (a full disk) leaves nothing half-written and nothing earlier
changed: each output is written beside its place and moved in only once complete."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile

from silentstar_jax.errors import DiskFull, is_disk_full


def mount_point(path: str) -> str:
    """The mount point of the file system holding `path` (what "the disk" is to a user)."""
    p = os.path.abspath(path)
    while not os.path.ismount(p):
        p = os.path.dirname(p)
    return p


def disk_full(doing: str, path: str, then: str) -> DiskFull:
    """The one line of a full disk: which disk, what failed, what is (still) there."""
    return DiskFull(f"disk full on {mount_point(path)}: {doing} failed ({os.strerror(errno.ENOSPC)}); {then}")


def remove(path: str) -> bool:
    """Remove a file or directory tree; False (and it stays) where that fails too."""
    try:
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


@contextlib.contextmanager
def staged(path: str, what: str, is_dir: bool = False, then: str = "free space and run the command again"):
    """Yield a temporary path beside `path` (a file; a directory with is_dir, whose files are then moved
    into `path`, which may hold others) that replaces it when the block ends; removed on failure.
    A full disk -> DiskFull naming `what`, `path` and `then` (what to do); other errors go on as they are."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = (
        tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=parent)
        if is_dir
        else os.path.join(parent, f".{os.path.basename(path)}.{os.getpid()}.partial")
    )
    try:
        yield tmp
        if is_dir:
            os.makedirs(path, exist_ok=True)
            for name in sorted(os.listdir(tmp)):
                os.replace(os.path.join(tmp, name), os.path.join(path, name))
            os.rmdir(tmp)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        gone = remove(tmp)
        if is_disk_full(e):
            left = "nothing of it was kept" if gone else f"the partial output {tmp} could not be removed"
            raise disk_full(f"writing {what} to {path}", path, f"{left}; nothing earlier was changed; {then}") from None
        raise
