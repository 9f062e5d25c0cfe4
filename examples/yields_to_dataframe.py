"""Turn a remote generator's yields into a Dask dataframe, and its partitions back into refs.

    python examples/yields_to_dataframe.py

A streaming generator reads a day of sensor readings hour by hour and yields each hour as a
pandas DataFrame; each yield is a key in the cluster the moment it is yielded.
``daskgen.dask.to_dataframe`` waits for the generator to end, then builds a ``dask.dataframe``
whose partitions are those yields where they lie: one task per partition, on the worker holding
it, and no copy. Dask's own operations take it from there; ``from_collection`` hands the
partitions back to remote functions. Needs pandas (``pip install "daskgen[dataframe]"``).
Starts an embedded cluster; runs in a few seconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from distributed import get_task_stream, wait

import daskgen as ray
from daskgen.dask import from_collection, to_dataframe

SENSORS = np.array(["north", "south", "east"])


@ray.remote
def read_hours(hours, rows_per_hour):
    """One DataFrame per hour (the readings are made up, and the same on every run)."""
    row = np.arange(rows_per_hour)
    for hour in range(hours):
        yield pd.DataFrame(
            {
                "hour": np.full(rows_per_hour, hour),
                "sensor": SENSORS[row % 3],
                "celsius": 10.0 + hour / 2 + (row % 7) / 10 + row % 3,
            }
        )


@ray.remote
def hottest(partition):
    """A partition passed at the top level arrives as its pandas DataFrame."""
    top = partition.loc[partition.celsius.idxmax()]
    return int(top.hour), str(top.sensor), round(float(top.celsius), 2)


def main() -> None:
    ray.init(num_cpus=2)

    readings = to_dataframe(read_hours.remote(24, 10_000))  # blocks until the generator ends
    print(f"{readings.npartitions} partitions, columns {list(readings.columns)}")

    with get_task_stream() as tasks:
        readings = readings.persist()
        wait(readings)
    print(f"persisting ran {len(tasks.data)} tasks: one per partition, none copies a yield")

    print(f"{len(readings)} readings")
    means = readings.groupby("sensor").celsius.mean(split_out=1).compute().sort_index()
    for sensor, mean in means.items():
        print(f"mean at {sensor}: {mean:.3f}")
    print(f"readings above 24 degrees: {int((readings.celsius > 24).sum().compute())}")

    refs = from_collection(readings)  # persisted already: refs to its partitions, no task
    first, last = ray.get([hottest.remote(refs[0]), hottest.remote(refs[-1])])
    print(f"hottest reading of the first hour: {first}; of the last hour: {last}")
    ray.shutdown()


if __name__ == "__main__":
    main()
