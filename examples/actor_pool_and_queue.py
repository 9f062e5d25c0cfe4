"""A pool of worker actors fed from a queue, the way Ray's ``ray.util`` is used.

    python examples/actor_pool_and_queue.py

Two ``Scorer`` actors score documents through an ``ActorPool``: ``map`` returns the scores in
the documents' order, ``map_unordered`` as they finish. A producer task puts work items on a
``Queue`` that a consumer actor drains, each blocking ``get`` waiting in the queue's own actor,
not in the caller. Starts an embedded cluster.
"""

from __future__ import annotations

import daskgen as ray
from daskgen.util import ActorPool
from daskgen.util.queue import Empty, Queue

DOCUMENTS = ["to be or not to be", "the rest is silence", "brevity is the soul of wit"]


@ray.remote
class Scorer:
    def score(self, text):
        words = text.split()
        return round(sum(map(len, words)) / len(words), 2)


@ray.remote
def produce(queue, items):
    for item in items:
        queue.put(item)
    return len(items)


@ray.remote
class Consumer:
    def drain(self, queue, expected):
        got = []
        while len(got) < expected:
            try:
                got.append(queue.get(timeout=30))
            except Empty:
                break
        return got


def main():
    ray.init(num_cpus=2)
    pool = ActorPool([Scorer.remote(), Scorer.remote()])
    ordered = list(pool.map(lambda actor, doc: actor.score.remote(doc), DOCUMENTS))
    print("scores in order:", ordered)
    unordered = sorted(pool.map_unordered(lambda actor, doc: actor.score.remote(doc), DOCUMENTS))
    print("scores as they finished, sorted:", unordered)

    queue = Queue(maxsize=4)
    consumer = Consumer.remote()
    drained = consumer.drain.remote(queue, 10)
    print("produced:", ray.get(produce.remote(queue, list(range(10)))))
    print("consumed:", ray.get(drained))
    queue.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
