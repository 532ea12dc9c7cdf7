"""One exception for mistakes a user can make; entry points turn it into one line and exit code 2."""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A problem the user can fix (bad path, bad config, bad prompt): shown as one line, no traceback."""


def cli_main(fn):
    """Wrap an entry point: UserError -> one line on stderr + exit 2; Ctrl-C -> exit 130 quietly."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
