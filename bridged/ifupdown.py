"""Debian ifupdown's interfaces(5) in, bridged.toml out (``bridgectl import-ifupdown``).

Pure logic: it reads files and returns text; it touches no link and talks to no bus.

The parser follows ifupdown 0.8's own reader (config.c), so that a file means here what
it means to ``ifup``: a line whose first non-blank character is ``#`` is a comment (there
are no end-of-line comments), a trailing backslash joins the next physical line as it
is, ``source`` patterns and ``source-directory`` paths are relative to the directory of
the file that names them, ``source-directory`` reads only run-parts style names, each
file is read once, options belong to the last ``iface``/``mapping`` line, and
``post-up``/``pre-down`` are ``up``/``down``.

The converter maps what bridged.toml can express and accounts for every other line:
each is either turned into a value, written up as a note (it needs nothing, or bridged
does it), or refused with the reason and the fix. Nothing is dropped silently.
"""

from __future__ import annotations

import fnmatch
import glob
import ipaddress
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from bridged import config as bconfig
from bridged.errors import ConfigError

DEFAULT_PATH = "/etc/network/interfaces"

# Exit statuses of ``bridgectl import-ifupdown`` (sysexits.h for the last three).
CONVERTED = 0
CONVERTED_WITH_REFUSALS = 1
NOT_CONVERTED = 2
EX_DATAERR = 65
EX_NOINPUT = 66
EX_CANTCREAT = 73

# C's isspace() in the C locale: str.split() would also split on Unicode spaces.
_SPACE = " \t\n\v\f\r"
_WORDS = re.compile(f"[^{_SPACE}]+")
# ifupdown's address families and their methods on Linux (inet.defn, inet6.defn, can.defn).
_METHODS = {
    "inet": ("loopback", "static", "manual", "dhcp", "bootp", "tunnel", "ppp", "wvdial",
             "ipv4ll"),
    "inet6": ("auto", "loopback", "static", "manual", "dhcp", "v4tunnel", "6to4"),
    "can": ("static",),
}
_HOOKS = ("pre_up", "up", "down", "post_down")
# run-parts(8) names, as ifupdown's source-directory filters them.
_RUN_PARTS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# bridge-utils expands "bridge_ports all" to these regular expressions.
_ALL_PORTS_REGEX = ("eth.*", "em.*", "en.*", "p[0-9].*")
# Names that are virtual NICs of VMs, never an uplink.
_TAP_LIKE = re.compile(r"^(tap|vnet|vif|tun)")
_USER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")
_STP_ON = ("on", "yes", "1")
_STP_OFF = ("off", "no", "0")
# bridge-utils options that only matter while the bridge runs STP.
_STP_ONLY = ("bridge_bridgeprio", "bridge_hello", "bridge_maxage", "bridge_pathcost",
             "bridge_portprio")
_KERNEL_FORWARD_DELAY = 15  # seconds: the bridge's default when bridge_fd is not given


# --- what the parser returns ------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    """A place in a file: the first physical line of a logical line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class ParseError(Exception):
    """A file ifupdown itself would refuse to read (ifup would fail on it)."""

    def __init__(self, where: Where, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.where = where
        self.why = why


class InputError(Exception):
    """The file named on the command line cannot be read at all."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path
        self.why = why


@dataclass(frozen=True)
class Option:
    name: str     # as written: "bridge-ports", "post-up"
    value: str
    where: Where
    last_line: int

    @property
    def key(self) -> str:
        """ifupdown's view: hook aliases resolved, "-" and "_" alike (IF_BRIDGE_PORTS)."""
        name = {"post-up": "up", "pre-down": "down"}.get(self.name, self.name)
        return name.replace("-", "_")

    @property
    def text(self) -> str:
        return f"{self.name} {self.value}"


@dataclass
class Stanza:
    kind: str          # "iface" or "mapping"
    name: str          # iface: the logical interface; mapping: its patterns
    family: str
    method: str
    header: str        # the first line as written
    where: Where
    last_line: int
    options: list[Option] = field(default_factory=list)

    def values(self, key: str) -> list[Option]:
        return [o for o in self.options if o.key == key]


@dataclass(frozen=True)
class Selection:
    """An ``auto``, ``allow-*``, ``no-auto-down`` or ``no-scripts`` line."""

    keyword: str
    names: tuple[str, ...]
    text: str
    where: Where
    last_line: int

    @property
    def meant(self) -> tuple[str, ...]:
        """The names before a '#' word: what the author meant, comment or not."""
        for i, name in enumerate(self.names):
            if name.startswith("#"):
                return self.names[:i]
        return self.names


@dataclass(frozen=True)
class Finding:
    """A line the converter reports: what it is, and why (with the fix, if any)."""

    where: Where | None
    what: str
    why: str

    def __str__(self) -> str:
        place = f"{self.where}: " if self.where else ""
        return f"{place}{self.what}: {self.why}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.where.file if self.where else None,
                "line": self.where.line if self.where else None,
                "what": self.what, "why": self.why}


@dataclass
class Interfaces:
    files: list[str] = field(default_factory=list)
    stanzas: list[Stanza] = field(default_factory=list)
    selections: list[Selection] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)
    refused: list[Finding] = field(default_factory=list)

    def ifaces(self, name: str) -> list[Stanza]:
        return [s for s in self.stanzas if s.kind == "iface" and s.name == name]


# --- the parser ---------------------------------------------------------------------------


def _logical_lines(text: str) -> Iterator[tuple[int, int, str]]:
    """(first line, last line, content) as ifupdown's get_line() joins and strips them."""
    physical = text.split("\n")
    if physical and physical[-1] == "":
        physical.pop()
    i = 0
    while i < len(physical):
        first = i + 1
        line = physical[i].lstrip(_SPACE)
        i += 1
        if line.startswith("#"):
            continue
        # The continuation is appended as it is: its indentation stays, a '#' in it is text.
        while line.endswith("\\"):
            line = line[:-1]
            if i == len(physical):
                break
            line += physical[i]
            i += 1
        yield first, i, line.rstrip(_SPACE)


def _split_first(line: str) -> tuple[str, str]:
    match = _WORDS.match(line)
    if match is None:
        return "", ""
    return match.group(0), line[match.end():].lstrip(_SPACE)


class _Reader:
    def __init__(self) -> None:
        self.result = Interfaces()
        self._seen: set[str] = set()

    def read(self, path: str, via: Where | None = None) -> None:
        real = os.path.realpath(path)
        if real in self._seen:
            # ifupdown reads each file once; sourcing it again (a loop) adds nothing.
            if via is not None:
                self.result.notes.append(Finding(via, f"source {path}",
                                                 "already read; ifupdown reads a file once"))
            return
        self._seen.add(real)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            if via is None:
                raise InputError(path, "no such file") from None
            return  # ifupdown skips what a pattern names but does not exist
        except IsADirectoryError:
            if via is None:
                raise InputError(path, "is a directory, not a file") from None
            self.result.notes.append(Finding(via, path, "a directory; ifupdown skips it"))
            return
        except OSError as e:
            if via is None:
                raise InputError(path, e.strerror or str(e)) from None
            self.result.refused.append(Finding(
                via, f"source {path}",
                f"cannot read it ({e.strerror}); ifup warns and skips it, so its stanzas "
                "are unknown here: run import-ifupdown as root"))
            return
        self.result.files.append(path)
        self._parse(path, data.decode("utf-8", errors="replace"))

    def _parse(self, path: str, text: str) -> None:
        current: Stanza | None = None   # the stanza options go to; None outside one
        for first, last, line in _logical_lines(text):
            where = Where(path, first)
            word, rest = _split_first(line)
            if not word:
                continue
            if word == "mapping":
                current = Stanza("mapping", " ".join(_WORDS.findall(rest)), "", "", line,
                                 where, last)
                self.result.stanzas.append(current)
            elif word == "source":
                current = None
                self._source(path, rest, where, directories=False)
            elif word.startswith("source-dir"):  # ifupdown matches the prefix
                current = None
                self._source(path, rest, where, directories=True)
            elif word == "iface":
                current = self._iface(rest, line, where, last)
                self.result.stanzas.append(current)
            elif (word in ("auto", "no-auto-down", "no-scripts")
                  or (word.startswith("allow-") and len(word) > 6)):
                current = None
                names = tuple(_WORDS.findall(rest))
                self._end_of_line_comment(where, line, names, selection=True)
                self.result.selections.append(Selection(word, names, line, where, last))
            elif current is None:
                raise ParseError(where, f"misplaced option {word!r}: it is not inside an "
                                        "iface or mapping stanza")
            elif current.kind == "mapping":
                if word not in ("script", "map"):
                    raise ParseError(where, f"misplaced option {word!r} in a mapping stanza")
                current.options.append(Option(word, rest, where, last))
                current.last_line = last
            else:
                if not rest:
                    raise ParseError(where, f"option {word!r} with empty value")
                current.options.append(Option(word, rest, where, last))
                current.last_line = last

    def _end_of_line_comment(self, where: Where, line: str, words: Sequence[str],
                             selection: bool = False) -> None:
        if not any(w.startswith("#") for w in words):
            return
        effect = ("ifup -a tries them as interfaces and reports them unknown" if selection
                  else "ifup warns and ignores the extra words")
        self.result.notes.append(Finding(
            where, line, f"ifupdown has no end-of-line comments: '#' and what follows are "
                         f"more words of this line ({effect}); read here as a comment"))

    def _iface(self, rest: str, line: str, where: Where, last: int) -> Stanza:
        words = _WORDS.findall(rest)
        if not words:
            raise ParseError(where, "too few parameters for iface line")
        name, *more = words
        if not more:
            raise ParseError(where, f"iface {name}: no address family (inet, inet6) and "
                                    "no 'inherits'")
        family, *more = more
        inherits: str | None = None
        method = ""
        if family == "inherits":
            family = ""
            inherits = more[0] if more else ""
            more = more[1:]
        elif family not in _METHODS:
            raise ParseError(where, f"iface {name}: unknown address family {family!r} "
                                    f"(known: {', '.join(_METHODS)})")
        elif not more:
            raise ParseError(where, f"iface {name} {family}: no method "
                                    f"(one of: {', '.join(_METHODS[family])})")
        else:
            method, *more = more
            if method == "inherits":
                method = ""
                inherits = more[0] if more else ""
                more = more[1:]
            elif more and more[0] == "inherits":
                inherits = more[1] if len(more) > 1 else ""
                more = more[2:]
            elif more:
                # ifup says "extra parameter for the iface line not understood and ignored".
                self._end_of_line_comment(where, line, more)
                if not more[0].startswith("#"):
                    self.result.notes.append(Finding(
                        where, line, f"ifupdown ignores the extra word {more[0]!r}"))
        stanza = Stanza("iface", name, family, method, line, where, last)
        if inherits is not None:
            self._inherit(stanza, inherits, where)
        if stanza.method and stanza.method not in _METHODS.get(stanza.family, ()):
            # Kept (ifupdown 0.8.19 refuses it, a later one may know it); refused if used.
            self.result.notes.append(Finding(where, line, f"unknown method {stanza.method!r}"))
        return stanza

    def _inherit(self, stanza: Stanza, template: str, where: Where) -> None:
        if not template:
            raise ParseError(where, "'inherits' keyword is missing a parameter")
        for other in self.result.stanzas:
            if other.kind == "iface" and other.name == template and (
                    not stanza.family or other.family == stanza.family):
                stanza.options.extend(other.options)
                stanza.family = stanza.family or other.family
                stanza.method = stanza.method or other.method
                return
        raise ParseError(where, f"unknown iface to inherit from: {template}")

    def _source(self, path: str, rest: str, where: Where, *, directories: bool) -> None:
        keyword = "source-directory" if directories else "source"
        # ifupdown expands with wordexp(WRDE_NOCMD): it refuses command substitution and
        # shell metacharacters (and then reads nothing); variables come from ifup's
        # environment, which is not ours to guess.
        if re.search(r"[|&;<>(){}`]", rest):
            self.result.notes.append(Finding(
                where, f"{keyword} {rest}",
                "ifupdown's wordexp refuses shell metacharacters here: it reads nothing"))
            return
        if "$" in rest:
            self.result.refused.append(Finding(
                where, f"{keyword} {rest}",
                "a variable in the path: its value at ifup time is unknown here; "
                "write the path out"))
            return
        try:
            words = shlex.split(rest)
        except ValueError as e:
            raise ParseError(where, f"{keyword}: {e}") from None
        base = os.path.dirname(path)
        for word in words:
            pattern = os.path.join(base, os.path.expanduser(word))
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            for match in matches:
                if directories:
                    self._source_directory(match, where)
                else:
                    self.read(match, via=where)

    def _source_directory(self, directory: str, where: Where) -> None:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return  # ifupdown's scandir() fails the same way and reads nothing
        for name in names:
            if _RUN_PARTS_NAME.match(name):
                self.read(os.path.join(directory, name), via=where)


def parse(path: str = DEFAULT_PATH) -> Interfaces:
    """Read ``path`` and what it sources. Raises InputError or ParseError."""
    reader = _Reader()
    reader.read(path)
    return reader.result


# --- hook commands ------------------------------------------------------------------------


@dataclass(frozen=True)
class Hook:
    """One pre-up/up/down/post-down command, as far as the converter understands it."""

    action: str                # "tap-add", "tap-del", "link", "port", "sleep" or "unknown"
    target: str = ""           # the interface it acts on
    user: str | None = None    # tap-add: the owner
    group: str | None = None
    flags: tuple[str, ...] = ()
    master: str | None = None  # port: the bridge


_HARMLESS_SUFFIX = re.compile(r"\s*(\|\|\s*(true|:)|[0-9&]?>+\s*/dev/null|2>&1)\s*$")


def interpret_hook(command: str, iface: str) -> Hook:
    """What a hook command does, for the commands bridged makes unnecessary."""
    command = re.sub(r"\$\{?IFACE\}?", iface, command).strip()
    while (stripped := _HARMLESS_SUFFIX.sub("", command)) != command:
        command = stripped
    if re.search(r"[|&;<>`$()]", command):
        return Hook("unknown")
    try:
        argv = shlex.split(command)
    except ValueError:
        return Hook("unknown")
    if not argv:
        return Hook("unknown")
    program, args = os.path.basename(argv[0]), argv[1:]
    if program == "ip":
        return _ip_hook(args)
    if program == "tunctl":
        return _tunctl_hook(args)
    if program == "brctl" and len(args) == 3 and args[0] in ("addif", "delif"):
        return Hook("port", target=args[2], master=args[1] if args[0] == "addif" else None)
    if program == "ifconfig" and args and set(args[1:]) <= {"up", "down", "0.0.0.0",
                                                            "promisc"}:
        return Hook("link", target=args[0])
    if program == "sleep" and len(args) == 1 and re.fullmatch(r"[0-9.]+", args[0]):
        return Hook("sleep")
    return Hook("unknown")


def _ip_hook(args: list[str]) -> Hook:
    while args and args[0] in ("-4", "-6", "-d", "-s"):
        args = args[1:]
    if len(args) < 2:
        return Hook("unknown")
    obj, verb, rest = args[0], args[1], args[2:]
    is_tuntap = obj == "tap" or ("tuntap".startswith(obj) and len(obj) >= 2)
    if is_tuntap and verb in ("add", "del", "delete"):
        return _tuntap(verb, rest)
    if "link".startswith(obj) and verb == "set":
        return _link_set(rest)
    if "link".startswith(obj) and verb in ("del", "delete"):
        name = rest[1] if rest[:1] == ["dev"] and len(rest) == 2 else (
            rest[0] if len(rest) == 1 else "")
        return Hook("link", target=name) if name else Hook("unknown")
    if "address".startswith(obj) and verb == "flush" and len(rest) == 2 and rest[0] == "dev":
        return Hook("link", target=rest[1])
    return Hook("unknown")


def _tuntap(verb: str, rest: list[str]) -> Hook:
    name = user = group = None
    mode = "tap" if verb != "add" else None
    flags: list[str] = []
    i = 0
    while i < len(rest):
        word = rest[i]
        value = rest[i + 1] if i + 1 < len(rest) else None
        if word in ("dev", "name") and value is not None:
            name, i = value, i + 2
        elif word == "mode" and value is not None:
            mode, i = value, i + 2
        elif word == "user" and value is not None:
            user, i = value, i + 2
        elif word == "group" and value is not None:
            group, i = value, i + 2
        elif word in ("one_queue", "pi", "vnet_hdr", "multi_queue"):
            flags.append(word)
            i += 1
        elif name is None and not word.startswith("-"):
            name, i = word, i + 1  # "ip tuntap add tap0 mode tap": the name without "dev"
        else:
            return Hook("unknown")
    if name is None or mode is None:
        return Hook("unknown")
    if mode != "tap":
        flags.append(f"mode {mode}")
    return Hook("tap-add" if verb == "add" else "tap-del", target=name, user=user,
                group=group, flags=tuple(flags))


def _link_set(rest: list[str]) -> Hook:
    if rest[:1] == ["dev"]:
        rest = rest[1:]
    if not rest:
        return Hook("unknown")
    name, words = rest[0], rest[1:]
    master = None
    i = 0
    while i < len(words):
        if words[i] in ("up", "down", "nomaster"):
            i += 1
        elif words[i] == "master" and i + 1 < len(words):
            master, i = words[i + 1], i + 2
        elif words[i] == "promisc" and i + 1 < len(words) and words[i + 1] in ("on", "off"):
            i += 2
        else:
            return Hook("unknown")
    return Hook("port", target=name, master=master) if master else Hook("link", target=name)


def _tunctl_hook(args: list[str]) -> Hook:
    name = user = group = None
    delete = None
    flags: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        if word == "-t" and value is not None:
            name, i = value, i + 2
        elif word == "-u" and value is not None:
            user, i = value, i + 2
        elif word == "-g" and value is not None:
            group, i = value, i + 2
        elif word == "-d" and value is not None:
            delete, i = value, i + 2
        elif word == "-n":
            flags.append("mode tun")
            i += 1
        elif word in ("-p", "-b"):
            i += 1
        else:
            return Hook("unknown")
    if delete is not None:
        return Hook("tap-del", target=delete)
    if name is None:
        return Hook("unknown")
    return Hook("tap-add", target=name, user=user, group=group, flags=tuple(flags))


# --- what the converter returns -----------------------------------------------------------


@dataclass(frozen=True)
class Removal:
    """What to take out of ifupdown's files: a stanza, a whole line, or names on a line."""

    where: Where
    last_line: int
    action: str                   # "stanza", "line" or "names"
    text: str                     # the stanza's first line, or the selection line
    names: tuple[str, ...] = ()   # with "names": the names to delete from the line

    def lines(self) -> str:
        if self.last_line > self.where.line:
            return f"{self.where.file}:{self.where.line}-{self.last_line}"
        return str(self.where)

    def describe(self) -> str:
        if self.action == "stanza":
            return "remove the stanza"
        if self.action == "line":
            return "remove the line"
        return "remove " + ", ".join(repr(n) for n in self.names) + " from the line"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.where.file, "line": self.where.line, "last_line": self.last_line,
                "action": self.action, "text": self.text, "names": list(self.names)}


@dataclass(frozen=True)
class TapCommand:
    """A tap ifupdown created, as its owner now asks bridged for it."""

    tap: str
    user: str
    where: Where

    @property
    def argv(self) -> tuple[str, ...]:
        return ("bridgectl", "create", "--linger", "--name", self.tap)

    @property
    def shell(self) -> str:
        """The line root runs: as the tap's owner, who must be in group bridged."""
        command = shlex.join(self.argv)
        if self.user in ("root", "0"):
            return command
        return f"runuser -u {shlex.quote(self.user)} -- {command}"

    def as_dict(self) -> dict[str, Any]:
        return {"tap": self.tap, "user": self.user, "argv": list(self.argv),
                "shell": self.shell, "file": self.where.file, "line": self.where.line}


@dataclass
class Conversion:
    source: str
    files: list[str]
    config: str | None          # bridged.toml text; None when nothing could be converted
    removals: list[Removal]
    setup: list[str]            # root's commands before the taps (usermod -aG bridged U)
    commands: list[TapCommand]
    notes: list[Finding]
    refused: list[Finding]

    @property
    def status(self) -> int:
        if self.config is None:
            return NOT_CONVERTED
        return CONVERTED_WITH_REFUSALS if self.refused else CONVERTED

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "source": self.source, "files": self.files,
                "config": self.config, "remove": [r.as_dict() for r in self.removals],
                "setup": self.setup, "commands": [c.as_dict() for c in self.commands],
                "notes": [n.as_dict() for n in self.notes],
                "refused": [r.as_dict() for r in self.refused]}


# --- the converter ------------------------------------------------------------------------


@dataclass
class _Tap:
    name: str
    user: str
    where: Where


@dataclass
class _Value:
    """One bridged.toml value and the lines it came from."""

    value: Any
    sources: list[Where] = field(default_factory=list)


def ifname_ok(name: str) -> bool:
    return bool(bconfig.IFNAME_RE.match(name)) and name not in (".", "..")


class _Converter:
    def __init__(self, interfaces: Interfaces, source: str) -> None:
        self.ifs = interfaces
        self.source = source
        self.notes: list[Finding] = list(interfaces.notes)
        self.refused: list[Finding] = list(interfaces.refused)
        self.bridge = ""
        self.bridge_where: Where | None = None
        self.uplinks: list[_Value] = []
        self.taps: dict[str, _Tap] = {}
        self.values: dict[str, _Value] = {}        # "stp" -> value, in [bridge]
        self.addresses: list[_Value] = []
        self.gateways: dict[int, _Value] = {}      # IP version -> the default gateway
        self.dns: list[_Value] = []
        self.dhcp: Where | None = None             # where "inet dhcp" was seen
        self.static: Where | None = None           # the first static stanza
        self.removed: list[str] = []               # interfaces whose stanzas go

    def note(self, where: Where | None, what: str, why: str) -> None:
        self.notes.append(Finding(where, what, why))

    def refuse(self, where: Where | None, what: str, why: str) -> None:
        self.refused.append(Finding(where, what, why))

    def run(self) -> Conversion:
        for mapping in (s for s in self.ifs.stanzas if s.kind == "mapping"):
            self.refuse(mapping.where, mapping.header,
                        "a mapping stanza picks the logical interface by running a script at "
                        "ifup time; bridged.toml cannot express that: write the interfaces "
                        "it maps out by hand")
        bridges = self._bridges()
        if bridges:
            chosen = self._choose_bridge(bridges)
            for other in bridges:
                if other != chosen:
                    st = self.ifs.ifaces(other)[0]
                    self.refuse(st.where, st.header,
                                f"bridged manages one bridge ({chosen}); {other} stays with "
                                "ifupdown: leave its stanza in place")
            self._convert_bridge(chosen)
        else:
            uplink = self._choose_uplink()
            if uplink is None:
                return self._result(None)
            self._convert_uplink(uplink)
        self._left_to_ifupdown()
        return self._result(self._render())

    def _result(self, config: str | None) -> Conversion:
        if config is None:
            self.refused.sort(key=_finding_order)
            return Conversion(self.source, self.ifs.files, None, [], [], [], self.notes,
                              self.refused)
        self.notes.sort(key=_finding_order)
        self.refused.sort(key=_finding_order)
        users = dict.fromkeys(t.user for t in self.taps.values() if t.user not in ("root", "0"))
        return Conversion(self.source, self.ifs.files, config, self._removals(),
                          [f"usermod -aG bridged {shlex.quote(u)}" for u in users],
                          [TapCommand(t.name, t.user, t.where) for t in self.taps.values()],
                          self.notes, self.refused)

    # -- choosing what to convert --

    def _names(self) -> list[str]:
        return list(dict.fromkeys(s.name for s in self.ifs.stanzas if s.kind == "iface"))

    def _bridges(self) -> list[str]:
        names = []
        for name in self._names():
            stanzas = self.ifs.ifaces(name)
            if any(st.values("bridge_ports") for st in stanzas):
                names.append(name)
            elif any(o.key.startswith("bridge_") for st in stanzas for o in st.options):
                self.note(stanzas[0].where, stanzas[0].header,
                          "bridge_* options without bridge_ports: bridge-utils makes no "
                          "bridge of it")
        return names

    def _choose_bridge(self, names: list[str]) -> str:
        # The bridge that carries the host's address is the one bridged must take over.
        for name in names:
            if any(st.method in ("static", "dhcp") for st in self.ifs.ifaces(name)):
                return name
        return names[0]

    def _unfit_uplink(self, name: str) -> str | None:
        """Why ``name`` cannot be an uplink of bridged's bridge, or None."""
        stanzas = self.ifs.ifaces(name)
        keys = {o.key for st in stanzas for o in st.options}
        if any(k.startswith("bond_") or k == "slaves" for k in keys):
            return (f"{name} is a bond (bond-* options): bridged makes no bonds; keep the "
                    "bond and its bridge in ifupdown")
        if "." in name or any(k.startswith("vlan_") for k in keys):
            return (f"{name} is a VLAN interface: bridged makes no VLAN devices; keep it "
                    "and its bridge in ifupdown")
        if any(k.startswith(("wpa_", "wireless_")) for k in keys):
            return (f"{name} is a Wi-Fi client (wpa-*/wireless-* options): a station "
                    "interface cannot be bridged")
        for st in stanzas:
            if st.method not in ("static", "dhcp", "manual", "auto"):
                return (f"{name} is configured by method {st.method or '(inherited)'!r}, "
                        "not as an Ethernet link")
        return None

    def _choose_uplink(self) -> str | None:
        """The interface that carries the host's address, when there is no bridge yet."""
        candidates: list[tuple[int, int, str]] = []
        unfit: list[tuple[Stanza, str]] = []
        for position, name in enumerate(self._names()):
            stanzas = self.ifs.ifaces(name)
            if (name == "lo" or any(st.method == "loopback" for st in stanzas)
                    or _TAP_LIKE.match(name)):
                continue
            why = self._unfit_uplink(name)
            if why is not None:
                unfit.append((stanzas[0], why))
                continue
            if any(st.values("gateway") for st in stanzas) or any(
                    st.family == "inet" and st.method == "dhcp" for st in stanzas):
                rank = 0
            elif any(st.values("address") for st in stanzas):
                rank = 1
            else:
                rank = 2
            candidates.append((rank, position, name))
        if candidates:
            return min(candidates)[2]
        for st, why in unfit:
            self.refuse(st.where, st.header, why)
        self.refuse(None, self.source,
                    "no bridge (no bridge_ports) and no Ethernet interface that could carry "
                    "the host's address: nothing for bridged to take over")
        return None

    # -- a bridge the file makes --

    def _convert_bridge(self, name: str) -> None:
        stanzas = self.ifs.ifaces(name)
        self.bridge, self.bridge_where = name, stanzas[0].where
        if not ifname_ok(name):
            self.refuse(stanzas[0].where, stanzas[0].header,
                        "not an interface name bridged accepts")
        ports = self._bridge_ports(stanzas)
        # A hook anywhere that puts a link into this bridge makes it a port too.
        for st in self.ifs.stanzas:
            for opt in st.options:
                if st.kind == "iface" and opt.key in _HOOKS:
                    hook = interpret_hook(opt.value, st.name)
                    if hook.action == "port" and hook.master == name:
                        ports.setdefault(hook.target, opt.where)
        self._collect_taps(stanzas, ports)
        for port, where in ports.items():
            self._port(port, where)
        self._bridge_options(stanzas)
        for st in stanzas:
            self._stanza(st, "bridge")
        self.removed.append(name)

    def _bridge_ports(self, stanzas: list[Stanza]) -> dict[str, Where]:
        options = [o for st in stanzas for o in st.values("bridge_ports")]
        first = options[0]
        for other in options[1:]:
            if other.value.split() != first.value.split():
                self.refuse(other.where, other.text,
                            f"differs from {first.where} ({first.text}); bridge-utils uses "
                            "the first it meets, and so does this conversion")
        ports: dict[str, Where] = {}
        regex = False
        for word in first.value.split():
            if word == "none":
                continue
            if word == "all":
                self._all_ports(first, ports)
            elif word in ("regex", "noregex"):
                regex = word == "regex"
            elif regex:
                pattern = _regex_to_glob(word)
                if pattern is None:
                    self.refuse(first.where, f"{first.name} regex {word}",
                                "a regular expression with no glob equivalent: list the "
                                "ports, or write an uplink glob like \"en*\"")
                else:
                    self.uplinks.append(_Value(pattern, [first.where]))
                    self.note(first.where, f"regex {word}",
                              f"as the uplink glob {pattern!r}: bridged enslaves every link "
                              "that matches, also ones that appear later")
            else:
                ports.setdefault(word, first.where)
        return ports

    def _all_ports(self, option: Option, ports: dict[str, Where]) -> None:
        # bridge-utils: every link present at ifup time whose name matches one of its
        # regexes. The port stanzas of the file say which NICs the author meant.
        named = [n for n in self._names()
                 if n != self.bridge and any(re.fullmatch(r, n) for r in _ALL_PORTS_REGEX)
                 and all(st.method == "manual" for st in self.ifs.ifaces(n))]
        globs = ["eth*", "em*", "en*", "p[0-9]*"]
        if named:
            for n in named:
                ports.setdefault(n, option.where)
            self.note(option.where, f"{option.name} all",
                      "'all' is every eth*, em*, en* and p[0-9]* link present at ifup time; "
                      f"the file declares {', '.join(named)} (inet manual), so uplinks = "
                      f"{json.dumps(named)}. To keep 'all', write uplinks = {json.dumps(globs)}")
        else:
            self.uplinks += [_Value(g, [option.where]) for g in globs]
            self.note(option.where, f"{option.name} all",
                      "'all' is every eth*, em*, en* and p[0-9]* link: the same globs as "
                      "uplinks (bridged also enslaves matching links that appear later)")

    def _collect_taps(self, bridge_stanzas: list[Stanza], ports: dict[str, Where]) -> None:
        """Taps made by the bridge's hooks, or by the stanzas of its ports."""
        for st in [*bridge_stanzas, *(s for p in ports for s in self.ifs.ifaces(p))]:
            for opt in st.options:
                if opt.key == "tunctl_user" and st.name in ports:
                    self._add_tap(st.name, opt.value.strip(), None, (), opt, ports)
                elif opt.key in _HOOKS:
                    hook = interpret_hook(opt.value, st.name)
                    if hook.action == "tap-add":
                        self._add_tap(hook.target, hook.user, hook.group, hook.flags, opt,
                                      ports)

    def _add_tap(self, name: str, user: str | None, group: str | None,
                 flags: tuple[str, ...], opt: Option, ports: dict[str, Where]) -> None:
        if name in self.taps:
            self.note(opt.where, opt.text, f"{name} is created at {self.taps[name].where} "
                                           "already")
            return
        if name not in ports:
            self.refuse(opt.where, opt.text, f"creates {name}, which is not a port of "
                                             f"{self.bridge}: leave it to ifupdown")
            return
        if any(f.startswith("mode ") for f in flags):
            self.refuse(opt.where, opt.text,
                        f"{name} is a tun device (layer 3): it cannot be a bridge port, and "
                        "bridged hands out only taps")
            return
        if user is None:
            self.note(opt.where, opt.text,
                      f"no owner: only root could open {name}; root creates it below")
            user = "root"
        elif not _USER_NAME.match(user):
            self.refuse(opt.where, opt.text, f"{user!r} is not a user name")
            return
        if group is not None:
            self.refuse(opt.where, opt.text,
                        f"group {group}: a tap of bridged's belongs to one user; each member "
                        "who starts the VM gets their own (bridgectl create or run)")
        if "multi_queue" in flags:
            self.refuse(opt.where, opt.text,
                        "multi_queue: add --queues N (qemu's queues=N) to the bridgectl line "
                        f"for {name}")
        self.taps[name] = _Tap(name, user, opt.where)
        self.note(opt.where, opt.text,
                  f"bridged creates {name} when its owner ({user}) runs the bridgectl line "
                  "below")

    def _port(self, port: str, where: Where) -> None:
        stanzas = self.ifs.ifaces(port)
        if port in self.taps:
            for st in stanzas:
                self._stanza(st, "tap")
            self.removed.append(port)
            return
        if not ifname_ok(port) or port == self.bridge:
            self.refuse(where, f"bridge port {port}", "not a valid interface name"
                        if port != self.bridge else "a bridge cannot be its own port")
            return
        why = self._unfit_uplink(port)
        if why is not None:
            self.refuse(where, f"bridge port {port}", why)
            return
        if _TAP_LIKE.match(port):
            self.refuse(where, f"bridge port {port}",
                        "looks like a VM's tap, and nothing in these files creates it: as an "
                        "uplink bridged would claim it. Let its owner run 'bridgectl create "
                        f"--linger --name {port}' (the name must start with taps.prefix)")
            return
        self.uplinks.append(_Value(port, [where]))
        for st in stanzas:
            self._stanza(st, "port")
        self.removed.append(port)

    def _bridge_options(self, stanzas: list[Stanza]) -> None:
        stp = False
        for opt in (o for st in stanzas for o in st.values("bridge_stp")):
            value = opt.value.strip()
            if value in _STP_ON or value in _STP_OFF:
                stp = value in _STP_ON
                self._set("stp", stp, opt)
            else:
                self.refuse(opt.where, opt.text, "brctl takes on/off/yes/no: ifupdown's bridge "
                                                 "kept STP off")
        stp = self.values.setdefault("stp", _Value(False)).value  # the first one counts
        for opt in (o for st in stanzas for o in st.values("bridge_fd")):
            self._forward_delay(opt, stp)
        if stp and "forward_delay" not in self.values:
            # No usable bridge_fd: brctl's setfd failed or was not run, the kernel kept its own.
            self.values["forward_delay"] = _Value(_KERNEL_FORWARD_DELAY, [stanzas[0].where])
            self.note(stanzas[0].where, "bridge_fd",
                      f"none usable: with STP on the kernel's default ({_KERNEL_FORWARD_DELAY} "
                      "s) applied; it is written out")
        # With STP off the kernel forwards on a new port at once, whatever the delay.
        self.values.setdefault("forward_delay", _Value(0))
        for opt in (o for st in stanzas for o in st.options):
            key = opt.key
            if key in ("bridge_ports", "bridge_stp", "bridge_fd") or not key.startswith(
                    "bridge_"):
                continue
            if key == "bridge_hw":
                self._mac(opt, from_uplink=False)
            elif key in ("bridge_maxwait", "bridge_waitport"):
                self.note(opt.where, opt.text, "ignored: bridged waits for nothing; it "
                                               "enslaves each uplink when it appears")
            elif key in _STP_ONLY and not stp:
                self.note(opt.where, opt.text, "only used by STP, which is off")
            else:
                self.refuse(opt.where, opt.text, "not expressible in bridged.toml: the bridge "
                                                 "keeps the kernel's default")

    def _forward_delay(self, opt: Option, stp: bool) -> None:
        try:
            seconds = Decimal(opt.value.strip())
        except InvalidOperation:
            self.refuse(opt.where, opt.text, "not a number of seconds")
            return
        if not seconds.is_finite():
            self.refuse(opt.where, opt.text, "not a number of seconds")
            return
        rounded = int(seconds.to_integral_value(rounding=ROUND_HALF_UP))
        low = 2 if stp else 0
        if not low <= rounded <= 30:
            self.refuse(opt.where, opt.text, f"out of range: bridged takes {low} to 30 "
                                             "seconds" + (" with STP on" if stp else ""))
            return
        if rounded != seconds:
            self.note(opt.where, opt.text, f"bridged takes whole seconds: rounded to {rounded}")
        self._set("forward_delay", rounded, opt)

    # -- an interface that carries the address, no bridge yet (the installer's file) --

    def _convert_uplink(self, uplink: str) -> None:
        stanzas = self.ifs.ifaces(uplink)
        taken = set(self._names())
        self.bridge = next(f"br{i}" for i in range(100) if f"br{i}" not in taken)
        self.uplinks.append(_Value(uplink, [stanzas[0].where]))
        self.values["stp"] = _Value(False)
        self.values["forward_delay"] = _Value(0)
        dhcp = any(st.family == "inet" and st.method == "dhcp" for st in stanzas)
        self.note(stanzas[0].where, stanzas[0].header,
                  f"no bridge in the file: bridged makes {self.bridge} with {uplink} as its "
                  f"uplink; {self.bridge} takes {uplink}'s MAC (bridge.mac = \"uplink\") and "
                  + ("gets the address by DHCP: the server sees the same client" if dhcp
                     else f"{uplink}'s addresses"))
        for st in stanzas:
            self._stanza(st, "uplink")
        self.removed.append(uplink)

    # -- one stanza, option by option --

    def _stanza(self, st: Stanza, role: str) -> None:
        """Account for every option of ``st``. role: bridge, port, tap or uplink."""
        carries_ip = role in ("bridge", "uplink")
        if st.family not in ("inet", "inet6"):
            self.refuse(st.where, st.header, f"address family {st.family or '?'}: not IP")
            return
        if st.method in ("static", "dhcp") and not carries_ip:
            self.refuse(st.where, st.header,
                        f"{st.name} is a port of {self.bridge} and has an address of its own: "
                        f"it stops working once {st.name} is enslaved; put it on {self.bridge}")
        elif carries_ip:
            self._ip_method(st)
        for opt in st.options:
            key = opt.key
            if ((key.startswith("bridge_") and role == "bridge")
                    or (key == "tunctl_user" and role == "tap")):
                continue  # taken by _bridge_options and _collect_taps
            if key in _HOOKS:
                self._hook(st, opt, role)
            elif key == "mtu":
                self._mtu(st, opt)
            elif key == "hwaddress":
                self._mac(opt, from_uplink=role != "bridge")
            elif key == "description":
                self.note(opt.where, opt.text, "ignored: a description changes nothing")
            elif not (carries_ip and self._ip_option(st, opt)):
                self.refuse(opt.where, opt.text, f"not expressible in bridged.toml ({st.name} "
                                                 f"{st.family} {st.method})")

    def _ip_method(self, st: Stanza) -> None:
        if st.method == "manual":
            return
        if st.family == "inet" and st.method == "dhcp":
            self.dhcp = self.dhcp or st.where
        elif st.method == "static":
            self.static = self.static or st.where
            self._static(st)
        elif st.family == "inet6" and st.method == "auto":
            self.note(st.where, st.header,
                      f"nothing to convert: the kernel autoconfigures {self.bridge} from "
                      "router advertisements (SLAAC), as it did here")
        elif st.family == "inet6" and st.method == "dhcp":
            self.refuse(st.where, st.header,
                        "stateful DHCPv6: bridged.toml cannot express it; SLAAC still works "
                        "on the bridge")
        else:
            self.refuse(st.where, st.header, f"method {st.method!r}: bridged.toml has no such "
                                             "IP mode")

    def _static(self, st: Stanza) -> None:
        version = 4 if st.family == "inet" else 6
        masks = st.values("netmask")
        prefix = None
        if masks:
            prefix = _prefix_length(masks[0].value.strip(), version)
            if prefix is None:
                self.refuse(masks[0].where, masks[0].text, "not a netmask or prefix length")
            for extra in masks[1:]:
                self.refuse(extra.where, extra.text, "a second netmask in one stanza")
        addresses = st.values("address")
        if not addresses:
            self.refuse(st.where, st.header, "static without an address")
        for opt in addresses:
            self._address(opt, version, prefix, masks[0] if masks else None)
        if version == 6 and st.values("gateway"):
            self.note(st.where, st.header,
                      "ifupdown turned router advertisements off here (a gateway means "
                      f"accept_ra 0); bridged leaves {self.bridge}'s IPv6 sysctls alone")

    def _address(self, opt: Option, version: int, netmask: int | None,
                 mask: Option | None) -> None:
        ip_text, slash, written = opt.value.strip().partition("/")
        length: int | None = None
        if slash:
            if not written.isdigit():
                self.refuse(opt.where, opt.text, "not an address with a prefix length")
                return
            length = int(written)
        sources = [opt.where]
        if netmask is not None and mask is not None:
            # ifupdown: an explicit netmask wins over the address's /prefix.
            if length is not None and length != netmask:
                self.note(opt.where, opt.text, f"{mask.text} overrides /{length}, as in "
                                               "ifupdown")
            length = netmask
            sources.append(mask.where)
        if length is None:
            host = 32 if version == 4 else 128
            self.refuse(opt.where, opt.text,
                        f"no netmask: ifupdown adds it as /{host}; bridged needs the prefix "
                        "length (address ADDRESS/24, say)")
            return
        try:
            address = ipaddress.ip_interface(f"{ip_text}/{length}")
        except ValueError:
            self.refuse(opt.where, opt.text, "not an IP address with a prefix length")
            return
        if address.version != version:
            self.refuse(opt.where, opt.text,
                        f"an IPv{address.version} address in an IPv{version} stanza")
        elif all(a.value != address for a in self.addresses):
            self.addresses.append(_Value(address, sources))

    def _ip_option(self, st: Stanza, opt: Option) -> bool:
        """Account for an IP option of a stanza that carries the host's IP; False if unknown."""
        key, value, static = opt.key, opt.value.strip(), st.method == "static"
        if key in ("address", "netmask") and static:
            pass  # taken by _static
        elif key == "gateway" and static:
            self._gateway(opt, 4 if st.family == "inet" else 6)
        elif key == "broadcast" and static and st.family == "inet":
            self._broadcast(st, opt)
        elif key == "network" and static:
            self.note(opt.where, opt.text, "ignored by ifupdown too: the prefix says it")
        elif key == "dns_nameservers":
            self._nameservers(opt)
        elif key in ("dns_search", "dns_domain"):
            self.refuse(opt.where, opt.text,
                        "not expressible: bridged hands only name servers to "
                        "systemd-resolved; keep the search list in /etc/resolv.conf (or "
                        "resolved's Domains=)")
        elif key == "dad_attempts" and static:
            self.note(opt.where, opt.text, "bridged adds addresses with duplicate address "
                                           "detection unless the uplink already held them")
        elif key in ("dad_interval", "ll_attempts", "ll_interval"):
            self.note(opt.where, opt.text, "a wait of ifup's: nothing to convert")
        elif key in ("accept_ra", "autoconf", "privext") and st.family == "inet6":
            sysctl = {"privext": "use_tempaddr"}.get(key, key)
            self.refuse(opt.where, opt.text,
                        f"a sysctl bridged does not set: net.ipv6.conf.{self.bridge}.{sysctl}"
                        f" = {value}, by hand once {self.bridge} exists")
        else:
            return False
        return True

    def _gateway(self, opt: Option, version: int) -> None:
        try:
            gateway = ipaddress.ip_address(opt.value.strip())
        except ValueError:
            self.refuse(opt.where, opt.text, "not an IP address")
            return
        known = self.gateways.get(version)
        if gateway.version != version:
            self.refuse(opt.where, opt.text,
                        f"an IPv{gateway.version} gateway in an IPv{version} stanza")
        elif known is not None and known.value != gateway:
            self.refuse(opt.where, opt.text,
                        f"a second IPv{version} default gateway ({known.value} from "
                        f"{known.sources[0]} is kept): bridged takes one per family")
        elif known is None:
            self.gateways[version] = _Value(gateway, [opt.where])

    def _broadcast(self, st: Stanza, opt: Option) -> None:
        value = opt.value.strip()
        own = {str(a.value.network.broadcast_address) for a in self.addresses
               if a.value.version == 4 and a.sources[0].file == st.where.file
               and st.where.line <= a.sources[0].line <= st.last_line}
        if value in ("+", "-") or value in own:
            self.note(opt.where, opt.text,
                      "the prefix's own broadcast address, which the kernel uses anyway")
        else:
            self.refuse(opt.where, opt.text, "a broadcast address other than the prefix's: "
                                             "not expressible")

    def _nameservers(self, opt: Option) -> None:
        for word in opt.value.split():
            try:
                server = ipaddress.ip_address(word)
            except ValueError:
                self.refuse(opt.where, opt.text, f"{word!r} is not an IP address")
                continue
            if all(d.value != server for d in self.dns):
                self.dns.append(_Value(server, [opt.where]))

    def _hook(self, st: Stanza, opt: Option, role: str) -> None:
        hook = interpret_hook(opt.value, st.name)
        ours = {self.bridge, *(u.value for u in self.uplinks), *self.taps}
        if hook.action == "tap-add":
            if role == "uplink":
                self.refuse(opt.where, opt.text, f"creates {hook.target}, but the file has no "
                                                 "bridge to put it on")
            # else accounted for by _collect_taps
        elif hook.action == "tap-del" and hook.target in self.taps:
            self.note(opt.where, opt.text, "bridged removes the tap when its owner runs "
                                           f"'bridgectl release {hook.target}'")
        elif hook.action in ("link", "port") and hook.target in ours and (
                hook.master in (None, self.bridge)):
            if opt.key in ("down", "post_down"):
                self.note(opt.where, opt.text, "ifdown's cleanup: not needed; bridged keeps "
                                               "the bridge and uplinks up, and a tap goes "
                                               "with 'bridgectl release'")
            else:
                self.note(opt.where, opt.text, "bridged does this itself")
        elif hook.action == "sleep":
            self.note(opt.where, opt.text, "ignored: bridged acts on link events, not delays")
        elif hook.action == "unknown":
            self.refuse(opt.where, opt.text,
                        "a hook command import-ifupdown does not understand, and bridged runs "
                        "no scripts: run it some other way (a systemd unit After=bridged)")
        else:
            self.refuse(opt.where, opt.text, f"acts on {hook.target or 'another link'}, which "
                                             f"is not part of {self.bridge}")

    def _mtu(self, st: Stanza, opt: Option) -> None:
        value = opt.value.strip()
        if st.family == "inet6":
            self.refuse(opt.where, opt.text, "in an inet6 stanza ifupdown sets only the IPv6 "
                                             "MTU sysctl, not the link's: not expressible")
        elif not value.isdigit() or not 68 <= int(value) <= 65535:
            self.refuse(opt.where, opt.text, "not an MTU between 68 and 65535")
        else:
            self._set("mtu", int(value), opt)
            if st.name != self.bridge:
                self.note(opt.where, opt.text, "as bridge.mtu: bridged gives the bridge and "
                                               "its uplinks that MTU")

    def _mac(self, opt: Option, from_uplink: bool) -> None:
        words = opt.value.split()
        if words[:1] == ["ether"]:
            words = words[1:]
        mac = words[0].lower() if len(words) == 1 else ""
        first_uplink = self.uplinks[0].value if self.uplinks else None
        if mac == "random":
            self.refuse(opt.where, opt.text, "a random MAC: bridged.toml takes a fixed one or "
                                             "\"uplink\"")
        elif words and words[0] == first_uplink:
            self._set("mac", "uplink", opt)  # bridge_hw eth0: the uplink's MAC
        elif not bconfig.MAC_RE.match(mac) or int(mac[:2], 16) & 1:
            self.refuse(opt.where, opt.text, "not a unicast MAC address (or the first port)")
        else:
            self._set("mac", mac, opt)
            if from_uplink:
                self.note(opt.where, opt.text, "as bridge.mac: the LAN keeps seeing this MAC, "
                                               f"now from {self.bridge}")

    def _set(self, key: str, value: Any, opt: Option) -> None:
        known = self.values.get(key)
        if known is not None and known.sources and known.value != value:
            self.refuse(opt.where, opt.text, f"conflicts with {known.sources[0]}: bridge."
                                             f"{key} = {_toml_value(known.value)} is kept")
        elif known is not None and known.value == value:
            known.sources.append(opt.where)
        else:
            self.values[key] = _Value(value, [opt.where])

    # -- what stays, what goes --

    def _left_to_ifupdown(self) -> None:
        for name in self._names():
            st = self.ifs.ifaces(name)[0]
            if name not in self.removed and name != "lo" and st.method != "loopback":
                self.note(st.where, st.header, "left to ifupdown")

    def _removals(self) -> list[Removal]:
        gone = set(self.removed) | set(self.taps)
        out = [Removal(st.where, st.last_line, "stanza", st.header)
               for name in self.removed for st in self.ifs.ifaces(name)]
        for sel in self.ifs.selections:
            hit = tuple(n for n in sel.meant if n in gone)
            if hit and any(n not in gone for n in sel.meant):
                out.append(Removal(sel.where, sel.last_line, "names", sel.text, hit))
            elif hit:
                out.append(Removal(sel.where, sel.last_line, "line", sel.text))
        return sorted(out, key=lambda r: (r.where.file, r.where.line))

    # -- bridged.toml --

    def _tap_prefix(self) -> str:
        names = list(self.taps)
        if all(n.startswith("tap") for n in names):
            return "tap"
        # Names, not paths: the longest common leading string is what is wanted.
        common = os.path.commonprefix(names).rstrip("0123456789")  # noqa: RUF071
        if len(common) < 2 or not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]{0,10}$", common):
            return "tap"
        if self.bridge.startswith(common) and self.bridge[len(common):].isdigit():
            return "tap"
        if any(fnmatch.fnmatchcase(common + "0", u.value) for u in self.uplinks):
            return "tap"
        return common

    def _render(self) -> str | None:
        prefix = self._tap_prefix()
        for tap in list(self.taps.values()):
            if not tap.name.startswith(prefix):
                self.refuse(tap.where, tap.name,
                            f"bridged hands out only names that start with taps.prefix "
                            f"({prefix!r}): create it as {prefix}N and change the VM's "
                            "ifname= (or libvirt's <target dev=>)")
                del self.taps[tap.name]
        if prefix != "tap":
            self.note(None, f"taps.prefix = \"{prefix}\"",
                      "the prefix the taps share: bridged names only taps that start with it")
        for uplink in list(self.uplinks):
            if fnmatch.fnmatchcase(self.bridge, uplink.value):
                self.refuse(uplink.sources[0], f"uplink {uplink.value}",
                            f"matches the bridge {self.bridge} itself: bridged.toml refuses "
                            "that; list the ports by name")
                self.uplinks.remove(uplink)
        mode = self._mode()
        if mode is None:
            return None
        lines = [f"# bridged.toml from {self.source} (bridgectl import-ifupdown).",
                 "# After each value, the lines it came from. See bridged.toml(5).",
                 "", "[bridge]",
                 _kv("name", self.bridge, [self.bridge_where]),
                 _kv("uplinks", list(dict.fromkeys(u.value for u in self.uplinks)),
                     [w for u in self.uplinks for w in u.sources])]
        for key in ("stp", "forward_delay", "mac", "mtu"):
            if key in self.values:
                lines.append(_kv(key, self.values[key].value, self.values[key].sources))
        lines += ["", "[ip]", _kv("mode", mode, [{"dhcp": self.dhcp, "static": self.static}
                                                  .get(mode)])]
        if mode == "static":
            lines.append(_kv("addresses", [str(a.value) for a in self.addresses],
                             [w for a in self.addresses for w in a.sources]))
            gateways = [self.gateways[v] for v in sorted(self.gateways)]
            if gateways:
                texts = [str(g.value) for g in gateways]
                lines.append(_kv("gateway", texts[0] if len(texts) == 1 else texts,
                                 [w for g in gateways for w in g.sources]))
            if self.dns:
                lines.append(_kv("dns", [str(d.value) for d in self.dns],
                                 [w for d in self.dns for w in d.sources]))
        if prefix != "tap":
            lines += ["", "[taps]", _kv("prefix", prefix, [])]
        text = "\n".join(lines) + "\n"
        try:
            bconfig.parse(tomllib.loads(text), self.source)
        except (ConfigError, tomllib.TOMLDecodeError) as e:
            self.refuse(None, "bridged.toml", f"the converted config does not load: {e}")
            return None
        return text

    def _mode(self) -> str | None:
        if self.dhcp is not None:
            if "dhcp" not in bconfig.IP_MODES:
                self.refuse(self.dhcp, "inet dhcp",
                            "this bridged has no ip.mode = \"dhcp\" (it knows "
                            f"{', '.join(bconfig.IP_MODES)}): keep ifupdown on this host for "
                            "now, or give it a static address")
                return None
            dropped = [("address", a) for a in self.addresses] + [
                ("gateway", g) for g in self.gateways.values()] + [("dns", d) for d in self.dns]
            for kind, value in dropped:
                self.refuse(value.sources[0], f"{kind} {value.value}",
                            f"ip.mode = \"dhcp\" (inet dhcp) takes no static {kind}: the DHCP "
                            "server's applies")
            return "dhcp"
        for version, gateway in list(self.gateways.items()):
            on_link = any(gateway.value in a.value.network for a in self.addresses
                          if a.value.version == version)
            if not on_link and not gateway.value.is_link_local:
                self.refuse(gateway.sources[0], f"gateway {gateway.value}",
                            "not inside any of the addresses (ifupdown adds it 'onlink'): "
                            "bridged needs the gateway on one of the bridge's prefixes")
                del self.gateways[version]
        if self.addresses:
            if self.dns:
                self.note(self.dns[0].sources[0], "dns-nameservers",
                          "as ip.dns: bridged hands them to systemd-resolved when it runs "
                          "(ifupdown needed resolvconf)")
            return "static"
        for kind, value in [("gateway", g) for g in self.gateways.values()] + [
                ("dns", d) for d in self.dns]:
            self.refuse(value.sources[0], f"{kind} {value.value}",
                        "without a static address bridged.toml carries no " + kind)
        self.gateways.clear()
        self.dns.clear()
        self.note(self.bridge_where, "ip.mode = \"none\"",
                  f"no address for {self.bridge} in the file: bridged adds and removes none")
        return "none"


def _finding_order(finding: Finding) -> tuple[str, int]:
    return (finding.where.file, finding.where.line) if finding.where else ("", 0)


def _prefix_length(mask: str, version: int) -> int | None:
    if mask.isdigit():
        length = int(mask)
        return length if length <= (32 if version == 4 else 128) else None
    if version != 4:
        return None
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
    except ValueError:
        return None


def _regex_to_glob(regex: str) -> str | None:
    """The glob that matches what a simple regex does (``eth.*``, ``en[0-9]``), or None."""
    out = []
    i = 0
    while i < len(regex):
        if regex.startswith(".*", i):
            out.append("*")
            i += 2
        elif regex[i] == ".":
            out.append("?")
            i += 1
        elif regex[i] == "[":
            end = regex.find("]", i + 1)
            body = regex[i + 1:end]
            if end < 0 or not re.fullmatch(r"\^?[A-Za-z0-9-]+", body):
                return None
            out.append("[" + body.replace("^", "!", 1) + "]")
            i = end + 1
        elif re.match(r"[A-Za-z0-9_-]", regex[i]):
            out.append(regex[i])
            i += 1
        else:
            return None
    return "".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # also a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _kv(key: str, value: Any, sources: Sequence[Where | None]) -> str:
    line = f"{key} = {_toml_value(value)}"
    places: dict[str, list[int]] = {}
    for where in sources:
        if where is not None:
            places.setdefault(where.file, []).append(where.line)
    if places:
        line += "  # " + ", ".join(f"{f}:{','.join(str(n) for n in sorted(set(ns)))}"
                                   for f, ns in places.items())
    return line


def convert(interfaces: Interfaces, source: str = DEFAULT_PATH) -> Conversion:
    """Map parsed interfaces to bridged.toml text, removals, tap commands and findings."""
    return _Converter(interfaces, source).run()


def import_file(path: str = DEFAULT_PATH) -> Conversion:
    """parse() then convert(). Raises InputError or ParseError."""
    return convert(parse(path), path)
