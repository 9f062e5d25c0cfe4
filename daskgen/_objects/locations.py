"""Which worker holds each large value this process was told about, so that ``get`` can take
it straight from there (``_client.fetch``) rather than by Dask's gather.

The scheduler names the worker when it announces a large yield (``daskgen-yield``'s
``large``/``worker``). A hint is only a hint: one that went stale (the value was freed, or lost
with its worker and made again elsewhere) makes that worker answer "not here", and Dask's
gather, which asks the scheduler, fetches it. So the table is kept bounded (the oldest hints go
first) rather than in step with every ref's release.
"""

from __future__ import annotations

import collections
import threading

from .._protocol import Key

MAX_HINTS = 10_000

_where: collections.OrderedDict[Key, str] = collections.OrderedDict()
_lock = threading.Lock()


def note(worker: str, keys: list[Key]) -> None:
    """``worker`` holds ``keys`` (from the client's loop)."""
    with _lock:
        for key in keys:
            _where[key] = worker
            _where.move_to_end(key)
        while len(_where) > MAX_HINTS:
            _where.popitem(last=False)


def holders(keys: list[Key]) -> dict[str, list[Key]]:
    """The hinted keys among ``keys``, by the worker said to hold them."""
    out: dict[str, list[Key]] = {}
    with _lock:
        for key in keys:
            worker = _where.get(key)
            if worker is not None:
                out.setdefault(worker, []).append(key)
    return out
