"""What SIGINT (Ctrl-C) and SIGTERM (a scheduler's notice: SLURM's scancel and time limit, a Kubernetes eviction,
a spot reclaim) do to a search: stop, keep everything, and say how to continue.

The first signal:
- inside Ray Tune's loop, is passed on by a Tune callback (search/tuner.py, ``StopOnSignal``) to Tune's own
  graceful stop (its SIGUSR1 handler, installed once the loop runs): Tune saves the experiment state with the
  running trials still RUNNING, so ``Tuner.restore`` continues them, then ends their actors; their Train runs
  keep their last registered checkpoints;
- in a stage after Tune (post-hoc, final protocol), ends the stage at its next check (``check()``, and every
  half second while it waits on Ray, ``gather()``) with ``SearchInterrupted``: the stage's partial results are
  already in its Optuna study, and nothing concludes;
- inside a ``critical()`` block (registering the champion and marking the search finished, under a second) is
  held until the block ends, so the search is either finished or not.

A second signal ends the process at once (``os._exit``): everything saved so far is still resumable.
The exit code is 128 + the first signal's number: 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_ACTIVE: Interrupts | None = None  # the search driver's, for Tune callbacks (pickled with the experiment: no state)


def active() -> Interrupts | None:
    return _ACTIVE


class SearchInterrupted(BaseException):
    """Raised at the first check after a signal, outside Tune's loop. A BaseException, so that the
    ``except Exception`` guards around MLflow calls (logging must never stop a search) do not swallow it."""


def exit_code(signum: int) -> int:
    return 128 + int(signum)


class Interrupts:
    """The search's signal handling; ``install()`` after ``ray.init``, which sets a SIGTERM handler of its own."""

    def __init__(self, resume_hint: Callable[[], str]) -> None:
        self.resume_hint = resume_hint
        self.started = time.monotonic()
        self.signum: int | None = None
        self.in_tune = False
        self.holding = 0  # depth of critical() blocks
        self.held = False  # a signal arrived inside a critical block
        self.forwarded = False  # passed on to Tune's loop
        self._saved: dict[int, object] = {}

    @property
    def received(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        global _ACTIVE
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only; a search run from a thread keeps the defaults
        _ACTIVE = self
        for signum in SIGNALS:
            current = signal.getsignal(signum)
            if current != self._handle:
                self._saved.setdefault(signum, current)
                signal.signal(signum, self._handle)
        # Tune would replace our SIGINT handler with its own during fit(); SIGUSR1 is how we reach its stop instead
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"

    def uninstall(self) -> None:
        global _ACTIVE
        _ACTIVE = None
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # the second signal: at once
            print(self.summary(), file=sys.stderr, flush=True)
            os._exit(exit_code(self.signum))
        self.signum = signum
        print(f"[spd-tune] {signal.Signals(signum).name}: stopping the search and keeping what it has (a second "
              "Ctrl-C ends it at once)", file=sys.stderr, flush=True)
        if self.holding:
            self.held = True  # reported when the block ends
        # Nothing is raised here: the handler can run inside Ray's C code (a ray.get), which cannot take an
        # exception from it. Tune's loop passes the signal on (StopOnSignal); the stages after it call check()
        # between steps and wait on Ray through gather().

    def forward_to_tune(self) -> None:
        """Called from Tune's loop (StopOnSignal): the first time after a signal, trigger Tune's graceful stop."""
        if self.signum is not None and not self.forwarded:
            self.forwarded = True
            signal.raise_signal(signal.SIGUSR1)  # Ray Tune's own stop (ray.tune.tune._setup_signal_catching)

    @contextlib.contextmanager
    def tune_loop(self) -> Iterator[None]:
        """Ray Tune's fit() runs in this block: a signal stops Tune instead of raising."""
        self.check()
        self.in_tune = True
        try:
            yield
        finally:
            self.in_tune = False

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A short block that a signal does not cut: the signal takes effect when the block ends."""
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1

    def check(self) -> None:
        """Raise ``SearchInterrupted`` if a signal has arrived (between stages, and after Tune returned)."""
        if self.signum is not None:
            raise SearchInterrupted()

    def elapsed(self) -> str:
        return duration(time.monotonic() - self.started)

    def summary(self) -> str:
        return f"interrupted after {self.elapsed()}: {self.resume_hint()}"

    @property
    def code(self) -> int:
        return exit_code(self.signum) if self.signum is not None else 0


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {seconds:02d}s" if hours else f"{minutes}m {seconds:02d}s"


def gather(refs: list) -> list:
    """``ray.get(refs)``, waiting in short steps so that a signal ends the wait (``SearchInterrupted``); the tasks
    still running end with the driver."""
    import ray  # here: this module is imported before Ray is (--dry-run, bad input)

    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
        if _ACTIVE is not None:
            _ACTIVE.check()
    return ray.get(list(refs))
