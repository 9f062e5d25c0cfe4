"""Ray's ``ray.remote_function`` name: a function decorated with ``@remote``, for type hints
and ``isinstance`` as Ray code uses it."""

from __future__ import annotations

from ._client.remote_function import RemoteFunction

__all__ = ["RemoteFunction"]
