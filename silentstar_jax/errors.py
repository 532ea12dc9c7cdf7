"""One exception for mistakes a user can make; entry points turn it into one line and exit code 2."""

from __future__ import annotations

import errno
import functools
import sys


class UserError(Exception):
    """A problem the user can fix (bad path, bad config, bad prompt): shown as one line, no traceback."""

    exit_code = 2


class NonFiniteError(UserError):
    """Training produced a non-finite loss or gradient (train.on_nonfinite=stop): exit code 3."""

    exit_code = 3


class DiskFull(UserError):
    """The disk filled up (or a quota ran out) while writing: exit code 4, distinct from a refusal, so
    that a scheduler can free space and run the same command again (a training then resumes)."""

    exit_code = 4


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(e: BaseException) -> bool:
    """An OSError ENOSPC / EDQUOT, or the same reported as text by a library that does not raise
    OSError (Orbax's tensorstore writer: "RESOURCE_EXHAUSTED ... No space left on device")."""
    if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
        return True
    return any(s in str(e) for s in ("No space left on device", "Disk quota exceeded"))


class Stopped(Exception):
    """Training stopped by SIGINT / SIGTERM after saving a checkpoint: exit 128 + the signal number
    (130, 143), as shells expect, so that `train.py && next-step` does not go on with a half-trained model."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def cli_main(fn):
    """Wrap an entry point: UserError -> one line on stderr + its exit code (2; DiskFull 4); an OSError
    the program did not expect -> one line + exit 2 (disk full: 4); a training stopped
    by a signal (Stopped) -> its line + 130 / 143; Ctrl-C elsewhere -> exit 130 quietly."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
        except Stopped as e:
            print(str(e), file=sys.stderr)
            sys.exit(e.exit_code)
        except OSError as e:
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            print(f"error: {where}{e.strerror or e}", file=sys.stderr)
            sys.exit(DiskFull.exit_code if is_disk_full(e) else 2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
