"""Ray's ``ray.util.placement_group``: book bundles of resources on Dask workers and run tasks
and actors in them (``docs/user-guide/placement-groups.md`` says what is guaranteed on Dask)."""

from __future__ import annotations

from .._client.placement import (
    PlacementGroup,
    PlacementGroupID,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

__all__ = [
    "PlacementGroup",
    "PlacementGroupID",
    "get_current_placement_group",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
