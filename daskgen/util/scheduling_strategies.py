"""Ray's ``ray.util.scheduling_strategies``: the objects the ``scheduling_strategy`` option
takes besides ``"DEFAULT"`` and ``"SPREAD"`` (``docs/user-guide/placement-groups.md`` says how
each maps onto Dask's worker restrictions)."""

from __future__ import annotations

from .._client.placement import PlacementGroupSchedulingStrategy
from .._client.scheduling import NodeAffinitySchedulingStrategy

__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
