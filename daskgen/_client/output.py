"""What daskgen tasks print or log, shown in the driver's terminal: the client's half (runs in
the driver; ``_worker.output`` is the workers' half and documents how it travels)."""

from __future__ import annotations

import sys
from typing import Any

from distributed import Client

from .. import _runtime
from .._worker.output import TOPIC_PREFIX, current_owner


def _print_event(event: tuple[float, dict[str, Any]]) -> None:
    _, msg = event
    out = sys.stderr if msg.get("stream") == "stderr" else sys.stdout
    for line in msg.get("lines", ()):
        out.write(f"({msg.get('label')}) {line}\n")
    out.flush()


def forward_to(client: Client) -> None:
    """Show here what daskgen tasks submitted by ``client`` print, wherever they run."""
    client.subscribe_topic(TOPIC_PREFIX + client.id, _print_event)


def owner_of_new_calls(client: Client) -> str | None:
    """Where the output of a call made now goes: inside a task, where its own goes; in the
    driver, to this client, unless ``init(log_to_driver=False)``."""
    if _runtime.in_worker_task() is not None:
        return current_owner()
    session = _runtime.session
    if session is not None and session.client is client and not session.log_to_driver:
        return None
    return client.id
