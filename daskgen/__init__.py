"""daskgen: Ray's remote-task and generator API on dask.distributed.

``import daskgen as ray`` and Ray code runs on a Dask cluster: each remote call is a Dask task,
and each value a remote generator yields becomes its own key in the cluster when it is yielded.
"""

from __future__ import annotations

from . import exceptions
from ._actors import ActorClass, ActorHandle, get_actor, kill, method
from ._api import cancel, get, put, wait
from ._context import get_runtime_context, progress
from ._generators import DynamicObjectRefGenerator, ObjectRefGenerator
from ._lifecycle import get_client, init, is_initialized, shutdown
from ._refs import ObjectRef
from ._remote_function import RemoteFunction, remote

__version__ = "0.1.0"

__all__ = [
    "init",
    "shutdown",
    "is_initialized",
    "get_client",
    "remote",
    "get",
    "put",
    "wait",
    "cancel",
    "get_runtime_context",
    "progress",
    "kill",
    "get_actor",
    "method",
    "ActorClass",
    "ActorHandle",
    "ObjectRef",
    "ObjectRefGenerator",
    "DynamicObjectRefGenerator",
    "RemoteFunction",
    "exceptions",
]
