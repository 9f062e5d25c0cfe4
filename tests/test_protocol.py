"""daskgen's messages as they travel (``daskgen/_protocol.py``)."""

from __future__ import annotations

from distributed.protocol import dumps, loads

from daskgen._protocol import RELEASE_OP, pack_keys, unpack_keys


def test_keys_packed_for_a_release_arrive_as_the_same_keys_through_msgpack():
    yields = [("f-yield-" + "a" * 32, i) for i in range(1_000)]
    others = ["g-" + "b" * 32, ("h", "not-an-index"), ("f-yield-" + "c" * 32, 5, 6)]
    keys = [*yields[:500], *others, *yields[500:], ("f-yield-" + "d" * 32, 0)]

    plain, indexed = pack_keys(keys)
    msg = loads(dumps({"op": RELEASE_OP, "keys": plain, "indexed": indexed}))

    assert sorted(map(repr, unpack_keys(msg["keys"], msg["indexed"]))) == sorted(map(repr, keys))


def test_a_release_of_many_yields_is_a_small_message():
    # 63,000 yields released in one batch were a 3.3 MB frame as key tuples (and over Dask's
    # 10 MiB threshold for serialising in another thread, by Dask's estimate).
    keys = [("produce-yield-" + "e" * 32, i) for i in range(63_000)]
    plain, indexed = pack_keys(keys)
    packed = sum(map(len, dumps({"op": RELEASE_OP, "keys": plain, "indexed": indexed})))
    whole = sum(map(len, dumps({"op": RELEASE_OP, "keys": keys})))
    assert packed < whole / 10, (packed, whole)
