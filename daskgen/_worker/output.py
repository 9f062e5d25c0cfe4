"""``print()`` and logging inside remote functions and actors, the worker's half (runs in the
worker processes; ``_client.output`` prints it in the driver's terminal).

As Ray does, each line is prefixed with where it came from: ``(split pid=123, worker=tcp://...)``.
A ``WorkerPlugin`` wraps the workers' ``sys.stdout``/``sys.stderr`` and adds a logging handler;
what a daskgen task writes (and only that) is sent with ``Worker.log_event`` on the topic
``daskgen-print-<caller's client id>`` (one topic per client: Dask keeps a bounded buffer per
topic), and the caller's client prints it. Turn it off with ``init(log_to_driver=False)``.
Output of code that is not a daskgen task goes where it always went.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
from typing import Any, TextIO

from distributed import WorkerPlugin

TOPIC_PREFIX = "daskgen-print-"

# (caller client id, label) of the daskgen task running in this context, if any.
task_origin: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "daskgen_task_origin", default=None
)


def label_for(name: str, worker_address: str) -> str:
    return f"{name} pid={os.getpid()}, worker={worker_address}"


class _TaskStream:
    """A stand-in for ``sys.stdout``/``stderr`` that forwards daskgen tasks' lines."""

    def __init__(self, original: TextIO, stream: str, worker: Any) -> None:
        self._original = original
        self._stream = stream
        self._worker = worker
        self._partial = threading.local()

    def write(self, text: str) -> int:
        origin = task_origin.get()
        if origin is None:
            return self._original.write(text)
        buffered = getattr(self._partial, "text", "") + text
        *lines, rest = buffered.split("\n")
        self._partial.text = rest
        if lines:
            _send(self._worker, origin, self._stream, lines)
        return len(text)

    def flush(self) -> None:
        origin = task_origin.get()
        rest = getattr(self._partial, "text", "")
        if origin is not None and rest:
            self._partial.text = ""
            _send(self._worker, origin, self._stream, [rest])
        self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def _send(worker: Any, origin: tuple[str, str], stream: str, lines: list[str]) -> None:
    caller, label = origin
    worker.log_event(TOPIC_PREFIX + caller, {"label": label, "stream": stream, "lines": lines})


class _TaskLogHandler(logging.Handler):
    """Forwards log records emitted inside daskgen tasks (formatted like a console handler)."""

    def __init__(self, worker: Any) -> None:
        super().__init__()
        self._worker = worker
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        origin = task_origin.get()
        if origin is None:
            return
        try:
            _send(self._worker, origin, "stderr", self.format(record).split("\n"))
        except Exception:
            self.handleError(record)


class ForwardOutput(WorkerPlugin):
    """Installs the forwarding streams and log handler on every worker (idempotent)."""

    name = "daskgen-forward-output"

    def setup(self, worker: Any) -> None:
        if not isinstance(sys.stdout, _TaskStream):
            sys.stdout = _TaskStream(sys.stdout, "stdout", worker)  # type: ignore[assignment]
        if not isinstance(sys.stderr, _TaskStream):
            sys.stderr = _TaskStream(sys.stderr, "stderr", worker)  # type: ignore[assignment]
        root = logging.getLogger()
        if not any(isinstance(h, _TaskLogHandler) for h in root.handlers):
            root.addHandler(_TaskLogHandler(worker))
