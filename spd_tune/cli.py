"""What every command-line entry point shares: a parser whose usage errors are one line, like all our errors,
and ``run_main``, which turns a user error into that one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .errors import USER_ERRORS


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message} (usage: {self.prog} --help)\n")


def run_main(fn: Callable[[], int], also: tuple[type[BaseException], ...] = ()) -> int:
    """``fn()``'s exit code; a ConfigError, DataError, WeightsError or CheckpointError (and the types in ``also``)
    becomes ``error: ...`` on stderr and exit code 2, with no traceback."""
    try:
        return fn()
    except (*USER_ERRORS, *also) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
