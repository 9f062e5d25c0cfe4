"""Run daskgen on a Dask cluster that already exists, instead of its embedded one.

    python examples/existing_cluster.py tcp://scheduler:8786          # an address
    DASKGEN_ADDRESS=tcp://scheduler:8786 python examples/existing_cluster.py
    python examples/existing_cluster.py                               # no address: starts a
                                                                      # LocalCluster itself

The cluster's workers need daskgen installed. Workers that declare a ``CPU`` resource
(``dask worker --resources CPU=4``) make ``num_cpus`` mean what it means in Ray; the LocalCluster
started here declares it. daskgen never stops a cluster it did not start: after
``ray.shutdown()`` the cluster and any client you passed in keep running.
"""

from __future__ import annotations

import os
import sys

import distributed

import daskgen as ray


@ray.remote
def where(i):
    """Which worker ran call ``i``."""
    return i, distributed.get_worker().address


@ray.remote
def squares(n):
    for i in range(n):
        yield i * i


@ray.remote
def heavy(x):
    return sum(range(x))


def use_the_cluster() -> None:
    client = ray.get_client()
    workers = client.scheduler_info(n_workers=-1)["workers"]
    print(f"connected to {client.scheduler.address} with {len(workers)} workers")
    for address, info in sorted(workers.items()):
        print(f"  worker {address}: {info['nthreads']} threads, resources {info['resources']}")

    placed = ray.get([where.remote(i) for i in range(8)])
    print(f"8 tasks ran on {len({w for _, w in placed})} worker(s)")
    print("streamed squares:", [ray.get(ref) for ref in squares.remote(6)])
    # A task may take a whole worker: as many CPU slots as the biggest worker declares. (Asking
    # for more than any worker has would make the task wait, with a warning, for such a worker.)
    cpus = max(info["resources"].get("CPU", 1) for info in workers.values())
    print(f"heavy(1000) with num_cpus={cpus}:", ray.get(heavy.options(num_cpus=cpus).remote(1000)))


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DASKGEN_ADDRESS")
    if address:
        # init() reads DASKGEN_ADDRESS by itself; passing it makes the argument case the same.
        ray.init(address)
        use_the_cluster()
        ray.shutdown()
        print(f"daskgen disconnected; the cluster at {address} keeps running")
        return

    # No address: start a cluster the way a user would, then hand its client to daskgen.
    # LocalCluster's worker processes re-import this script as __main__: hence the guard below.
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            resources={"CPU": 2},
            dashboard_address=":0",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        print(f"started a LocalCluster at {cluster.scheduler_address}")
        ray.init(client=client)
        use_the_cluster()
        ray.shutdown()
        print(f"daskgen shut down; our client is still {client.status}")


if __name__ == "__main__":
    main()
