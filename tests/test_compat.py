"""bridged.bus.compat's writer on a real dbus-daemon, with whichever dbus-fast is installed:
fds handed over close the instant a message carries them out, and only then.

(Why it matters: a tap handed out by OpenTap lives as long as its last fd. Ours closed
later than the send could be that last one, and the close then blocks ~16 ms while the
kernel unregisters the tap.)
"""

from __future__ import annotations

import asyncio
import os

import pytest
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from bridged.bus import compat
from tests.buslab import PrivateBus

pytestmark = pytest.mark.root


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def handed(receiver: MessageBus, fd: int) -> Message:
    """A signal for ``receiver`` alone (no match rule needed), carrying ``fd``."""
    return Message(message_type=MessageType.SIGNAL, destination=receiver.unique_name,
                   path="/org/bridged/Test", interface="org.bridged.Test", member="Handed",
                   signature="h", body=[0], unix_fds=[fd])


async def handed_over_fds_close_as_they_are_sent(address: str) -> None:
    sender = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM,
                              negotiate_unix_fd=True).connect()
    receiver = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM,
                                negotiate_unix_fd=True).connect()
    compat.install(sender)
    arrived: asyncio.Queue[Message] = asyncio.Queue()

    def on_message(message: Message) -> None:
        if message.message_type == MessageType.SIGNAL and message.member == "Handed":
            arrived.put_nowait(message)

    receiver.add_message_handler(on_message)
    read_end, write_end = os.pipe()
    kept_r, kept_w = os.pipe()
    try:
        compat.hand_over(sender, [read_end])
        compat.hand_over(sender, [kept_r])
        # Not sent: the caller gets it back, still open, and the writer forgets it.
        assert compat.take_back(sender, [kept_r]) == [kept_r]
        assert is_open(kept_r)

        assert is_open(read_end)
        sent = sender.send(handed(receiver, read_end))
        await sent
        # Closed as it went: nothing of ours holds the pipe but the copy in flight.
        assert not is_open(read_end)
        assert compat.take_back(sender, [read_end]) == []

        message = await asyncio.wait_for(arrived.get(), 10)
        assert len(message.unix_fds) == 1
        os.write(write_end, b"through")
        assert os.read(message.unix_fds[0], 16) == b"through"
        os.close(message.unix_fds[0])

        # A message carrying fds nobody handed over leaves them to its sender.
        sent = sender.send(handed(receiver, kept_r))
        await sent
        assert is_open(kept_r)
        message = await asyncio.wait_for(arrived.get(), 10)
        os.close(message.unix_fds[0])
    finally:
        for fd in (read_end, write_end, kept_r, kept_w):
            if is_open(fd):
                os.close(fd)
        sender.disconnect()
        receiver.disconnect()


def test_handed_over_fds_close_as_they_are_sent(bus: PrivateBus):
    asyncio.run(handed_over_fds_close_as_they_are_sent(bus.address))
