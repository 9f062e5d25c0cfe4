"""``print()`` and logging inside remote functions and actors, the worker's half (runs in the
worker processes; ``_client.output`` prints it in the driver's terminal).

As Ray does, each line is prefixed with where it came from: ``(split pid=123, worker=tcp://...)``.
The first daskgen task a worker runs wraps the worker's ``sys.stdout``/``sys.stderr`` and adds a
logging handler (:func:`install`; not a registered worker plugin, which the scheduler would
hand to every worker that joins, daskgen or not). What a daskgen task writes (and only that) is
sent with ``Worker.log_event`` on the topic ``daskgen-print-<owner>``, where the owner is the
driver's client id (a task submitted from a task keeps its parent's owner, so nested tasks'
output reaches the driver too; one topic per driver: Dask keeps a bounded buffer per topic),
and the driver prints it. ``init(log_to_driver=False)`` gives calls no owner: their output goes
where it would without daskgen. Output of code that is not a daskgen task goes where it always
went.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
from typing import Any, TextIO

from .._protocol import OUTPUT_TOPIC_PREFIX as TOPIC_PREFIX

# (owner, label) of the daskgen task running in this context, if its output is forwarded.
task_origin: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "daskgen_task_origin", default=None
)


def label_for(name: str, worker_address: str) -> str:
    return f"{name} pid={os.getpid()}, worker={worker_address}"


def origin_for(owner: str | None, name: str, worker: Any) -> tuple[str, str] | None:
    """The ``task_origin`` of a call whose output goes to ``owner`` (None: not forwarded);
    installs the forwarding in this worker process the first time."""
    if owner is None:
        return None
    install(worker)
    return owner, label_for(name, worker.address)


def current_owner() -> str | None:
    """The output owner of the daskgen task running here (for the calls it makes), if any."""
    origin = task_origin.get()
    return origin[0] if origin is not None else None


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
    owner, label = origin
    worker.log_event(TOPIC_PREFIX + owner, {"label": label, "stream": stream, "lines": lines})


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


_installed = threading.Lock()


def install(worker: Any) -> None:
    """Wrap this process's streams and add the log handler, once (from a task's thread)."""
    if isinstance(sys.stdout, _TaskStream) and isinstance(sys.stderr, _TaskStream):
        return
    with _installed:
        if not isinstance(sys.stdout, _TaskStream):
            sys.stdout = _TaskStream(sys.stdout, "stdout", worker)  # type: ignore[assignment]
        if not isinstance(sys.stderr, _TaskStream):
            sys.stderr = _TaskStream(sys.stderr, "stderr", worker)  # type: ignore[assignment]
        root = logging.getLogger()
        if not any(isinstance(h, _TaskLogHandler) for h in root.handlers):
            root.addHandler(_TaskLogHandler(worker))
