"""Errors a client can match by name.

Each class carries its D-Bus error name, so the bus layer maps an exception to a
reply without parsing messages back out of strings.
"""

from bridged.api import ERROR_PREFIX


class BridgedError(Exception):
    """Base of every error that is meant to reach a client."""

    dbus_name = ERROR_PREFIX + "Failed"


class AccessDenied(BridgedError):
    dbus_name = ERROR_PREFIX + "AccessDenied"


class InvalidArgument(BridgedError):
    dbus_name = ERROR_PREFIX + "InvalidArgument"


class NameInUse(BridgedError):
    dbus_name = ERROR_PREFIX + "NameInUse"


class QuotaExceeded(BridgedError):
    dbus_name = ERROR_PREFIX + "QuotaExceeded"


class NoSuchTap(BridgedError):
    dbus_name = ERROR_PREFIX + "NoSuchTap"


class NotOwner(BridgedError):
    dbus_name = ERROR_PREFIX + "NotOwner"


class BridgeUnavailable(BridgedError):
    dbus_name = ERROR_PREFIX + "BridgeUnavailable"


class Failed(BridgedError):
    dbus_name = ERROR_PREFIX + "Failed"


class ConfigError(Exception):
    """A config file that cannot be used; names the file, the key and the problem."""

    def __init__(self, path: str, key: str, why: str) -> None:
        self.path = path
        self.key = key
        self.why = why
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {why}")
