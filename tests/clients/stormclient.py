"""Many VM launchers in one process, run as an unprivileged user, for the restart storm.

usage: stormclient.py ADDRESS STATE_FILE SEED MAX_TAPS [--hold-only]

Keeps up to MAX_TAPS taps, each held as a VM would hold it: an OpenTap tap's fd by a
forked child of its own, a CreateTap tap bound (option pid) to a forked child, a
lingering tap by this process, released by name. At random it gets a new tap or lets
one go (its child killed, or ReleaseTap), until killed; calls that fail because the
daemon is down or was killed mid-call are counted and the work goes on.

STATE_FILE (JSON, replaced atomically) lists what it holds: a tap is listed only once
the reply naming it came, and unlisted before it is let go, so a listed tap whose
holder is alive must exist. Children die with this process (PR_SET_PDEATHSIG).

With --hold-only it only keeps MAX_TAPS OpenTap taps open, getting new ones as their
holders are killed from outside.
"""

import asyncio
import ctypes
import json
import os
import random
import signal
import sys
import time

from bridged.client import Client, ClientError

PR_SET_PDEATHSIG = 1
# Errors that say a call never reached the daemon (its name had no owner).
NEVER_DELIVERED = ("org.freedesktop.DBus.Error.ServiceUnknown",
                   "org.freedesktop.DBus.Error.NameHasNoOwner")


def hold_forever(keep: int) -> None:
    """In a forked child: keep fd ``keep`` (or none), die with the parent."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if keep >= 3:
            os.closerange(3, keep)
            os.closerange(keep + 1, 65536)
        else:
            os.closerange(3, 65536)
        while True:
            time.sleep(3600)
    finally:
        os._exit(0)


def spawn(keep: int = -1) -> int:
    pid = os.fork()
    if pid == 0:
        hold_forever(keep)
    return pid


class Storm:
    def __init__(self, address: str, state_file: str, seed: int, max_taps: int,
                 hold_only: bool = False) -> None:
        self.address = address
        self.hold_only = hold_only
        self.state_file = state_file
        self.rng = random.Random(seed)
        self.max_taps = max_taps
        self.held: dict[str, dict] = {}  # ifname -> {"kind", "holder"}
        self.counts = {"open": 0, "bound": 0, "linger": 0, "released": 0, "failed_calls": 0}
        self.doubtful: list[str] = []  # lingering taps whose release got no answer

    def save(self) -> None:
        tmp = f"{self.state_file}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "held": self.held, "counts": self.counts}, f)
        os.replace(tmp, self.state_file)

    def reap(self) -> None:
        """Children killed from outside (by the test) take their taps with them."""
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for name, tap in list(self.held.items()):
                if tap["holder"] == pid:
                    del self.held[name]
            self.save()

    async def acquire(self, client: Client) -> None:
        kind = "open" if self.hold_only else self.rng.choice(("open", "open", "bound", "linger"))
        if kind == "open":
            opened = await client.open_tap({"label": "storm"})
            holder = spawn(opened.fds[0])
            for fd in opened.fds:
                os.close(fd)
            self.held[opened.ifname] = {"kind": kind, "holder": holder}
        elif kind == "bound":
            child = spawn()
            try:
                _path, name = await client.create_tap({"pid": child, "label": "storm"})
            except BaseException:
                os.kill(child, signal.SIGKILL)  # frees the tap if it was made after all
                raise
            self.held[name] = {"kind": kind, "holder": child}
        else:
            _path, name = await client.create_tap({"linger": True, "label": "storm"})
            self.held[name] = {"kind": kind, "holder": os.getpid()}
        self.counts[kind] += 1
        self.save()

    async def release(self, client: Client) -> None:
        name = self.rng.choice(sorted(self.held))
        tap = self.held.pop(name)
        self.save()  # unlisted before it goes
        if tap["kind"] == "linger":
            try:
                await client.release_tap(name)
            except ClientError as e:
                if e.name in NEVER_DELIVERED:
                    self.held[name] = tap  # the daemon was away: try again later
                    self.save()
                else:
                    # Killed mid-call (NoReply): released or not, nobody can say. Not
                    # listed as held; released again later (NoSuchTap is then fine).
                    self.doubtful.append(name)
                raise
        else:
            os.kill(tap["holder"], signal.SIGKILL)
        self.counts["released"] += 1

    async def run(self) -> None:
        self.save()
        client = await Client.connect(self.address)
        while True:
            self.reap()
            try:
                if self.hold_only:
                    if len(self.held) < self.max_taps:
                        await self.acquire(client)
                elif self.doubtful and self.rng.random() < 0.2:
                    name = self.doubtful.pop()
                    try:
                        await client.release_tap(name)
                    except ClientError as e:
                        if e.name != "NoSuchTap":
                            self.doubtful.append(name)
                            raise
                elif len(self.held) < self.max_taps and \
                        (not self.held or self.rng.random() < 0.6):
                    await self.acquire(client)
                else:
                    await self.release(client)
            except ClientError:
                self.counts["failed_calls"] += 1
                self.save()
            await asyncio.sleep(self.rng.uniform(0.005, 0.05))


if __name__ == "__main__":
    address, state_file, seed, max_taps = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
        int(sys.argv[4])
    asyncio.run(Storm(address, state_file, seed, max_taps, "--hold-only" in sys.argv).run())
