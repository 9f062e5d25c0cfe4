"""What daskgen tasks print or log, shown in the driver's terminal: the client's half (runs in
the driver; ``_worker.output`` is the workers' half and documents how it travels)."""

from __future__ import annotations

import sys
from typing import Any

from distributed import Client

from .._worker.output import TOPIC_PREFIX, ForwardOutput


def _print_event(event: tuple[float, dict[str, Any]]) -> None:
    _, msg = event
    out = sys.stderr if msg.get("stream") == "stderr" else sys.stdout
    for line in msg.get("lines", ()):
        out.write(f"({msg.get('label')}) {line}\n")
    out.flush()


def forward_to(client: Client) -> None:
    """Show here what daskgen tasks submitted by ``client`` print, wherever they run."""
    client.register_plugin(ForwardOutput())
    client.subscribe_topic(TOPIC_PREFIX + client.id, _print_event)
