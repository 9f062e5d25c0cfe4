"""``timeline()``: what ran where and when, as a Chrome trace, as Ray's ``ray.timeline()``
(runs in the driver). The events are Dask's task stream (the scheduler's ``task-stream``
plugin, Dask's own, which ``init`` starts recording on the cluster: the dashboard's task
stream shows the same), one event per compute, transfer or spill of each task.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from .. import _runtime
from .._protocol import key_name


def timeline(filename: str | None = None) -> list[dict[str, Any]] | None:
    """The cluster's task events as Chrome trace events (open the file in
    ``chrome://tracing`` or Perfetto): written to ``filename`` as JSON, else returned."""
    client = _runtime.client()
    records = client.get_task_stream(start=0)
    events = [event for record in records for event in _events(record)]
    if filename is None:
        return events
    with open(filename, "w") as out:
        json.dump(events, out)
    return None


def _events(record: dict[str, Any]) -> list[dict[str, Any]]:
    key = record.get("key")
    name = key_name(key)
    worker = str(record.get("worker", ""))
    host = urlsplit(worker).hostname or worker
    out = []
    for span in record.get("startstops", ()):
        action = span.get("action", "compute")
        out.append(
            {
                "cat": f"task::{name}" if action == "compute" else action,
                "name": name if action == "compute" else f"{action}:{name}",
                "pid": host,
                "tid": f"worker:{worker}",
                "ts": span["start"] * 1e6,
                "dur": (span["stop"] - span["start"]) * 1e6,
                "ph": "X",
                "args": {"name": name, "task_id": str(key), "status": record.get("status")},
            }
        )
    return out
