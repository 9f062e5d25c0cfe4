"""daskgen: Ray's remote-task and generator API on dask.distributed.

``import daskgen as ray`` and Ray code runs on a Dask cluster: each remote call is a Dask task,
and each value a remote generator yields becomes its own key in the cluster when it is yielded.

This module is the whole public face; everything else is private. ``docs/architecture.md``
shows the layers (``_protocol`` and the other bottom modules, then ``_cluster``/``_scheduler``,
``_objects``, ``_worker`` and ``_client``) and which process each runs in.
"""

from __future__ import annotations

# ``dask`` (yields into Dask collections) is there as ``ray.dask``, but not in ``__all__``:
# ``from daskgen import *`` must not shadow the user's own ``dask``.
from . import actor, dask, exceptions, remote_function, util  # noqa: F401
from ._client.actors import ActorClass, ActorHandle, get_actor, kill, method
from ._client.api import cancel, get, put, wait
from ._client.context import get_runtime_context, progress
from ._client.introspection import available_resources, cluster_resources, get_gpu_ids, nodes
from ._client.remote_function import RemoteFunction, remote
from ._client.session import get_client, init, is_initialized, shutdown
from ._client.timeline import timeline
from ._objects.generators import DynamicObjectRefGenerator, ObjectRefGenerator
from ._objects.refs import ObjectRef
from ._protocol import VERSION

__version__ = VERSION

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
    "cluster_resources",
    "available_resources",
    "nodes",
    "timeline",
    "get_gpu_ids",
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
    "actor",
    "remote_function",
    "util",
]

# The public names say they are daskgen's (reprs, docs, pickles by reference), wherever they
# are defined inside the package.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("daskgen."):
        _obj.__module__ = "daskgen"
del _name, _obj
