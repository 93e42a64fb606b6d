"""What every command-line entry point shares: a parser whose usage errors are one line, like all our errors,
and ``run_main``, which turns a user error into that one line and exit code 2."""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Callable

from .errors import USER_ERRORS


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message}{self._did_you_mean(message)} (usage: {self.prog} --help)\n")

    def _did_you_mean(self, message: str) -> str:
        """For a mistyped flag, the flags it is closest to (``--trails``: did you mean --trials?)."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        known = [flag for flag in self._option_string_actions if flag.startswith("--")]
        hints = []
        for word in message.split(":", 1)[1].split():
            close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.7)
            if word.startswith("--") and close:
                hints.append(f"{word.split('=', 1)[0]}: did you mean {close[0]}?")
        return f" ({'; '.join(hints)})" if hints else ""


def run_main(fn: Callable[[], int], also: tuple[type[BaseException], ...] = ()) -> int:
    """``fn()``'s exit code; a ConfigError, DataError, WeightsError or CheckpointError (and the types in ``also``)
    becomes ``error: ...`` on stderr and exit code 2, with no traceback."""
    try:
        return fn()
    except (*USER_ERRORS, *also) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
