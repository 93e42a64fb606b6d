"""What a search prints: our own one-line events (search/events.py), one per rung a trial reaches and one when it
ends. Ray's preamble, Tune's status tables and the workers' verbose output (worker prints, Ray Train's
checkpoint notices, placement-group clean-up) go to ``<output>/<space>/ray.log``, once each; ``--verbose`` brings
them back to the console.

Ray forwards worker output to the driver through one handler of its stream dispatcher, and logs its own notices
through the ``ray`` logger; both are pointed at the file for the search's duration and restored after.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator, TextIO

RAY_LOG = "ray.log"
_console: list[TextIO] = []  # where say() writes while Tune's own output goes to ray.log


def say(line: str) -> None:
    """One line for the person at the console, wherever Tune's output goes."""
    print(line, file=_console[-1] if _console else sys.stdout, flush=True)


@contextlib.contextmanager
def tune_output_to(path: Path) -> Iterator[None]:
    """While Tune runs: what it prints (its configuration box, status tables, TensorBoard hint) goes to ``path``,
    and ``say`` keeps the console."""
    _console.append(sys.stdout)
    with open(path, "a", buffering=1) as file, contextlib.redirect_stdout(file):
        try:
            yield
        finally:
            _console.pop()
_HANDLER = "ray_print_logs"  # the name ray._private.worker gives its driver-side printer
LIBRARY_LOGGERS = ("ray", "mlflow")  # their console handlers write to the file instead


class RayOutput:
    """Where Ray's output goes for a search: its log records at once, its workers' output once Ray has started."""

    def __init__(self, path: Path, file: TextIO):
        self.path, self.file = path, file
        self.saved: list | None = None

    def capture_workers(self) -> None:
        """After ray.init, which installs the printer of worker output: point it at the file instead."""
        from ray._private import worker as ray_worker

        dispatcher = ray_worker.global_worker_stdstream_dispatcher
        ignore_prefix = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)

        def to_file(data: dict) -> None:
            ray_worker.print_worker_logs(data, self.file, ignore_prefix)

        self.saved = list(dispatcher.handlers)
        if any(name == _HANDLER for name, _ in self.saved):
            dispatcher.remove_handler(_HANDLER)
            dispatcher.add_handler(_HANDLER, to_file)

    def restore_workers(self) -> None:
        if self.saved is not None:
            from ray._private import worker as ray_worker

            dispatcher = ray_worker.global_worker_stdstream_dispatcher
            with dispatcher._lock:
                dispatcher.handlers = self.saved


@contextlib.contextmanager
def ray_output_to(path: Path) -> Iterator[RayOutput]:
    """Send Ray's own log records (its start-up preamble included) to ``path`` (appended) while the block runs,
    and its workers' output too once ``capture_workers`` has been called after ray.init."""
    import mlflow  # noqa: F401  (mlflow installs its console handler when first imported: swap it after that)

    file = open(path, "a", buffering=1)
    output = RayOutput(path, file)
    file_handler = logging.StreamHandler(file)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    moved = {}
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        moved[name] = [h for h in logger.handlers  # console handlers only
                       if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
        for h in moved[name]:
            logger.removeHandler(h)
        logger.addHandler(file_handler)
    try:
        yield output
    finally:
        for name, handlers in moved.items():
            logger = logging.getLogger(name)
            logger.removeHandler(file_handler)
            for h in handlers:
                logger.addHandler(h)
        output.restore_workers()
        file.close()
