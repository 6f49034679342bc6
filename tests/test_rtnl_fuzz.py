"""Fuzzing the rtnetlink decoder with the recorded kernel messages (no root).

Seeded, so every run tries the same cases: truncations, bit flips, corrupted length
fields (the message's and every attribute's, nested ones included), random garbage and
spliced messages. Whatever the bytes, the decoder may only raise its own DecodeError;
the request loop fed the same garbage as replies may only raise DecodeError or the
NetlinkError a (garbled) error message reports.
"""

from __future__ import annotations

import contextlib
import random
import struct
import time
import traceback
from collections.abc import Callable
from typing import Any

from bridged.kernel import rtnl
from bridged.kernel.rtnl import (
    NLMSGHDR,
    DecodeError,
    NetlinkError,
    RtnlSocket,
    address_index,
    decode_address,
    decode_error,
    decode_fdb,
    decode_link,
    decode_route,
    decode_vxlan,
    messages,
    neigh_header,
)
from tests.test_rtnl_unit import PORT, ScriptedSocket, done, recorded

SEED = 0x5EED_2026
CASES = 24_000
LOOP_CASES = 2_000
DECODERS: dict[int, Callable[[bytes, int, int], Any]] = {
    rtnl.RTM_NEWLINK: decode_link, rtnl.RTM_DELLINK: decode_link,
    rtnl.RTM_NEWADDR: decode_address, rtnl.RTM_DELADDR: decode_address,
    rtnl.RTM_NEWROUTE: decode_route, rtnl.RTM_DELROUTE: decode_route,
    rtnl.NLMSG_ERROR: decode_error, rtnl.NLMSG_DONE: decode_error,
    rtnl.RTM_NEWNEIGH: decode_fdb, rtnl.RTM_DELNEIGH: decode_fdb,
}
EVERY_DECODER = (decode_link, decode_address, decode_route, decode_error, decode_fdb,
                 decode_vxlan)
BOUNDARIES = (0, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 0x7FFF, 0x8000, 0xFFFF)


def corpus() -> list[bytes]:
    return [m for name in ("links.bin", "bridge-ports.bin", "addresses.bin", "routes.bin",
                           "errors.bin", "fdb.bin") for m in recorded(name)]


def length_fields(message: bytes) -> list[int]:
    """Offsets of the message's length and of every attribute's, nested ones too (any
    payload that parses cleanly as attributes is taken for nested ones)."""
    fixed = {rtnl.RTM_NEWLINK: rtnl.IFINFOMSG.size, rtnl.RTM_NEWADDR: rtnl.IFADDRMSG.size,
             rtnl.RTM_NEWROUTE: rtnl.RTMSG.size,
             rtnl.RTM_NEWNEIGH: rtnl.NDMSG.size}.get(NLMSGHDR.unpack_from(message)[1])
    found = [0]
    if fixed is None:
        return found

    def walk(start: int, end: int) -> bool:
        spans = []
        offset = start
        while offset + 4 <= end:
            length = struct.unpack_from("=H", message, offset)[0]
            if length < 4 or offset + length > end:
                return False
            spans.append((offset, offset + 4, offset + length))
            offset += (length + 3) & ~3
        for header, payload, stop in spans:
            found.append(header)
            if stop - payload >= 4:
                walk(payload, stop)
        return True

    walk(16 + fixed, len(message))
    return found


def mutate(rng: random.Random, pool: list[bytes]) -> tuple[str, bytes]:
    message = rng.choice(pool)
    how = rng.randrange(7)
    if how == 0:
        return "truncated", message[:rng.randrange(len(message))]
    if how == 1:
        data = bytearray(message)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return "bit flips", bytes(data)
    if how in (2, 3):
        data = bytearray(message)
        for _ in range(rng.randint(1, 3)):
            at = rng.choice(length_fields(message))
            now = struct.unpack_from("=H", data, at)[0]
            value = rng.choice((rng.choice(BOUNDARIES), rng.randrange(0x10000),
                                min(0xFFFF, max(0, now + rng.randint(-4, 4)))))
            struct.pack_into("=H", data, at, value)
        return "length fields", bytes(data)
    if how == 4:
        data = bytearray(message)
        struct.pack_into("=I", data, 0, rng.choice((0, 15, 16, 17, 0xFFFFFFFF,
                                                    rng.randrange(len(message) * 2))))
        return "message length", bytes(data)
    if how == 5:
        header = NLMSGHDR.pack(0, rng.choice(list(DECODERS)), rng.randrange(0x10000), 0, 0)
        garbage = header + rng.randbytes(rng.randrange(300))
        return "garbage", struct.pack("=I", rng.choice((len(garbage), rng.randrange(400)))) \
            + garbage[4:]
    other = rng.choice(pool)
    cut = rng.randrange(len(message))
    return "spliced", message[:cut] + other[rng.randrange(len(other)):]


def decode_all(data: bytes) -> None:
    """Every way the daemon reads bytes: the batch, each message by type, and every
    decoder on the whole buffer whatever the type says (a lying type byte)."""
    try:
        found = messages(data)
    except DecodeError:
        found = []
    for kind, _seq, offset, length in found:
        decoder = DECODERS.get(kind)
        if decoder is not None:
            with contextlib.suppress(DecodeError):
                decoder(data, offset, length)
        if kind in (rtnl.RTM_NEWADDR, rtnl.RTM_DELADDR):
            with contextlib.suppress(DecodeError):
                address_index(data, offset)
        if kind in (rtnl.RTM_NEWNEIGH, rtnl.RTM_DELNEIGH):
            with contextlib.suppress(DecodeError):
                neigh_header(data, offset)
        if kind in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK):
            with contextlib.suppress(DecodeError):
                decode_vxlan(data, offset, length)
    for decoder in EVERY_DECODER:
        with contextlib.suppress(DecodeError):
            decoder(data, 0, len(data))


def test_decoder_raises_nothing_but_decode_error(figures: Callable[[str], None]) -> None:
    rng = random.Random(SEED)
    pool = corpus()
    started = time.perf_counter()
    failures = []
    kinds: dict[str, int] = {}
    for case in range(CASES):
        how, data = mutate(rng, pool)
        kinds[how] = kinds.get(how, 0) + 1
        try:
            decode_all(data)
        except Exception as e:  # anything else escaping is the bug this test is for
            failures.append(f"case {case} ({how}, {data.hex()}): {e!r}\n"
                            f"{traceback.format_exc(limit=-2)}")
    elapsed = time.perf_counter() - started
    figures(f"rtnl fuzz: {CASES} cases in {elapsed:.2f} s (seed {SEED:#x}; {kinds})")
    assert not failures, f"{len(failures)} cases escaped DecodeError:\n" + \
        "\n".join(failures[:5])
    assert min(kinds.values()) > CASES // 10


def test_request_loop_raises_nothing_but_decode_or_kernel_errors() -> None:
    rng = random.Random(SEED + 1)
    pool = corpus()
    failures = []
    for case in range(LOOP_CASES):
        how, garbage = mutate(rng, pool)

        def reply(seq: int, _request: bytes, garbage: bytes = garbage) -> list[bytes]:
            # Garbage stamped as the answer, then a proper end so a reader that skips
            # it finishes: the loop must neither hang nor crash on what came before.
            if len(garbage) >= 16:
                garbage = NLMSGHDR.pack(*NLMSGHDR.unpack_from(garbage)[:3], seq, PORT) \
                    + garbage[16:]
            return [garbage, done(seq)]

        # Enough answers for every retry of an inconsistent dump of links or routes.
        sock = RtnlSocket(ScriptedSocket(*[reply] * 2 * rtnl.DUMP_ATTEMPTS))  # type: ignore[arg-type]
        call = rng.choice((sock.dump_links, lambda s=sock: s.routes(2),
                           lambda s=sock: s.fdb(3)))
        try:
            call()
        except (DecodeError, NetlinkError):
            pass
        except Exception as e:
            failures.append(f"case {case} ({how}, {garbage.hex()}): {e!r}")
    assert not failures, "\n".join(failures[:5])


def test_fuzz_cases_are_the_same_every_run() -> None:
    pool = corpus()
    runs = []
    for _run in range(2):
        rng = random.Random(SEED)
        runs.append([mutate(rng, pool) for _ in range(200)])
    assert runs[0] == runs[1]
