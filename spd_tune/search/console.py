"""What a search prints: our own one-line events (search/events.py), one per rung a trial reaches and one when it
ends. Ray's preamble, Tune's status tables and the workers' verbose output (worker prints, Ray Train's
checkpoint notices, placement-group clean-up) go to ``<output>/<space>/ray.log``, once each; ``--verbose`` brings
them back to the console.

Ray forwards worker output to the driver through one handler of its stream dispatcher, and logs its own notices
through the ``ray`` logger; both are pointed at the file for the search's duration and restored after.
"""

from __future__ import annotations

import contextlib
import io
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
    """Where Ray's output goes for a search: held in memory until the search's folder may be written (a search
    refused after Ray started writes nothing), then the file; its workers' output once Ray has started."""

    def __init__(self, path: Path):
        self.path = path
        self.stream: TextIO = io.StringIO()
        self.saved: list | None = None

    def write(self, text: str) -> int:
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def to_file(self) -> None:
        """The checks have passed: the folder is created, and what was held goes first into the file."""
        held = self.stream.getvalue()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = open(self.path, "a", buffering=1)
        self.stream.write(held)

    def capture_workers(self) -> None:
        """After ray.init, which installs the printer of worker output: point it here instead."""
        from ray._private import worker as ray_worker

        dispatcher = ray_worker.global_worker_stdstream_dispatcher
        ignore_prefix = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)

        def to_file(data: dict) -> None:
            ray_worker.print_worker_logs(data, self, ignore_prefix)

        self.saved = list(dispatcher.handlers)
        if any(name == _HANDLER for name, _ in self.saved):
            dispatcher.remove_handler(_HANDLER)
            dispatcher.add_handler(_HANDLER, to_file)

    def close(self) -> None:
        if self.saved is not None:
            from ray._private import worker as ray_worker

            dispatcher = ray_worker.global_worker_stdstream_dispatcher
            with dispatcher._lock:
                dispatcher.handlers = self.saved
        self.stream.close()


@contextlib.contextmanager
def ray_output_to(path: Path) -> Iterator[RayOutput]:
    """Send Ray's own log records (its start-up preamble included) to ``path`` while the block runs (held in
    memory until ``to_file``), and its workers' output too once ``capture_workers`` has been called."""
    import mlflow  # noqa: F401  (mlflow installs its console handler when first imported: swap it after that)

    output = RayOutput(path)
    file_handler = logging.StreamHandler(output)
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
        output.close()
