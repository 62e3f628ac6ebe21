"""The node's configuration: frozen dataclasses, validated once by :func:`load_config` at start-up.

Every key has its default on its dataclass field and nowhere else; a field's ``metadata["check"]`` says what a
value must be. :func:`load_config` rejects unknown keys (a typo must not silently fall back to a default) and
raises :class:`~node.errors.ConfigError` with one line naming the file, the key and what is expected.

Relative paths in the file resolve against the folder that holds the file, so a config can travel with its data.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import string
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from node.errors import ConfigError

log = logging.getLogger(__name__)

#: SEG types the builder knows (values of ``node.convert.seg.SegType``; strings, so loading a config stays light).
SEG_TYPES = ("binary", "labelmap", "fractional")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: Placeholders an export command may use; anything else in braces is a typo.
EXPORT_PLACEHOLDERS = frozenset({"nifti", "series_uid", "inbox", "sidecar"})

_DESTINATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

Check = Callable[[Any], str | None]
"""A value check: returns what is expected when the value is wrong, else None."""


def _range(low: float, high: float | None = None) -> Check:
    def check(value: Any) -> str | None:
        if value < low or (high is not None and value > high):
            return f"a number from {low:g} to {high:g}" if high is not None else f"a number of at least {low:g}"
        return None

    return check


def _choice(choices: tuple[str, ...]) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else "one of " + ", ".join(repr(c) for c in choices)

    return check


def ae_title_problem(value: str) -> str | None:
    """What is wrong with a DICOM AE title, or None when it is valid.

    >>> ae_title_problem("SEGNODE") is None
    True
    >>> ae_title_problem("A" * 17)
    'an AE title of 1-16 characters without backslash or control characters'
    """
    text = value.strip(" ")
    if not 1 <= len(value) <= 16 or not text or "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "an AE title of 1-16 characters without backslash or control characters"
    if not value.isascii():
        return "an AE title of ASCII characters"
    return None


def _not_empty(value: Any) -> str | None:
    return None if str(value).strip() else "a non-empty value"


def _export_command(value: Any) -> str | None:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError:
        return "a command whose braces are balanced (write {{ and }} for literal braces)"
    unknown = names - EXPORT_PLACEHOLDERS
    if unknown:
        allowed = ", ".join("{" + n + "}" for n in sorted(EXPORT_PLACEHOLDERS))
        return f"a command using only the placeholders {allowed} (found {{{sorted(unknown)[0]}}})"
    return None


def _checked(default: Any, check: Check | None = None) -> Any:
    return field(default=default, metadata={"check": check} if check else {})


@dataclass(frozen=True)
class NodeConfig:
    """``[node]``: the DICOM listener."""

    ae_title: str = _checked("SEGNODE", ae_title_problem)
    bind: str = _checked("0.0.0.0", _not_empty)
    port: int = _checked(11112, _range(1, 65535))
    max_associations: int = _checked(10, _range(1, 1000))
    receive_processes: int = _checked(2, _range(1, 64))
    log_level: str = _checked("INFO", _choice(LOG_LEVELS))


@dataclass(frozen=True)
class PathsConfig:
    """``[paths]``: where the node keeps its state and exchanges files with segmentation tools."""

    data: Path = Path("/var/lib/segnode")
    inbox: Path = Path("/var/lib/segnode/inbox")
    export: Path = Path("/var/lib/segnode/export")

    @property
    def database(self) -> Path:
        """The SQLite state database."""
        return self.data / "segnode.sqlite3"

    @property
    def processed(self) -> Path:
        """Where inbox items go once their SEG is built."""
        return self.data / "processed"

    @property
    def failed(self) -> Path:
        """Where inbox items go when they cannot be turned into a SEG, each with a reason file."""
        return self.data / "failed"


@dataclass(frozen=True)
class SeriesConfig:
    """``[series]``: when a received series counts as complete."""

    quiet_seconds: float = _checked(30.0, _range(0.0, 86400.0))


@dataclass(frozen=True)
class InboxConfig:
    """``[inbox]``: watching for segmentations."""

    settle_seconds: float = _checked(5.0, _range(0.0, 3600.0))
    poll: bool = False


@dataclass(frozen=True)
class ExportConfig:
    """``[export]``: NIfTI export of completed series and the optional per-site command run on each."""

    enabled: bool = True
    command: str = _checked("", _export_command)
    command_timeout: float = _checked(3600.0, _range(1.0, 7 * 86400.0))


@dataclass(frozen=True)
class SegConfig:
    """``[seg]``: how SEG objects are built."""

    type: str = _checked("binary", _choice(SEG_TYPES))
    algorithm_name: str = _checked("segnode", _not_empty)
    #: Empty means "segnode's own version".
    algorithm_version: str = ""
    #: Default label table (names, colours, codes) for items without one; None for none.
    labels: Path | None = None
    series_description: str = "segnode SEG"


@dataclass(frozen=True)
class SendConfig:
    """``[send]``: C-STORE of SEGs to the destinations, with exponential backoff."""

    max_attempts: int = _checked(10, _range(1, 1000))
    backoff_initial: float = _checked(5.0, _range(0.0, 86400.0))
    backoff_max: float = _checked(600.0, _range(0.0, 7 * 86400.0))
    timeout: float = _checked(30.0, _range(1.0, 3600.0))


@dataclass(frozen=True)
class DicomDestination:
    """A ``[[destinations]]`` entry that is a DICOM peer (C-STORE SCP)."""

    name: str
    ae_title: str
    host: str
    port: int

    def describe(self) -> str:
        return f"{self.name} ({self.ae_title}@{self.host}:{self.port})"


@dataclass(frozen=True)
class FolderDestination:
    """A ``[[destinations]]`` entry that is a folder: each SEG is written there as a file."""

    name: str
    folder: Path

    def describe(self) -> str:
        return f"{self.name} (folder {self.folder})"


Destination = DicomDestination | FolderDestination


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    node: NodeConfig = NodeConfig()
    paths: PathsConfig = PathsConfig()
    series: SeriesConfig = SeriesConfig()
    inbox: InboxConfig = InboxConfig()
    export: ExportConfig = ExportConfig()
    seg: SegConfig = SegConfig()
    send: SendConfig = SendConfig()
    destinations: tuple[Destination, ...] = ()
    #: The file this was loaded from (None for a default-constructed Config).
    source: Path | None = None

    def destination(self, name: str) -> Destination:
        """The destination called ``name``; ConfigError naming the known ones otherwise."""
        for destination in self.destinations:
            if destination.name == name:
                return destination
        known = ", ".join(d.name for d in self.destinations) or "none configured"
        raise ConfigError(f"{self.source or 'config'}: no destination named {name!r} (known: {known})")


_SECTIONS: dict[str, type[Any]] = {
    "node": NodeConfig,
    "paths": PathsConfig,
    "series": SeriesConfig,
    "inbox": InboxConfig,
    "export": ExportConfig,
    "seg": SegConfig,
    "send": SendConfig,
}

_T = TypeVar("_T")


class _Reader:
    """Turns one parsed TOML document into a Config, naming the file and key in every error."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent

    def fail(self, key: str, expected: str, value: Any = dataclasses.MISSING) -> ConfigError:
        got = "" if value is dataclasses.MISSING else f", got {value!r}"
        return ConfigError(f"{self.path}: {key}: expected {expected}{got}")

    def path_value(self, key: str, value: Any) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "a path (a non-empty string)", value)
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base / path).resolve()

    def coerce(self, key: str, value: Any, kind: Any) -> Any:
        """``value`` as the Python type a field declares (str, int, float, bool, Path, Path | None)."""
        if kind is bool:
            if not isinstance(value, bool):
                raise self.fail(key, "true or false", value)
            return value
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(key, "an integer", value)
            return value
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(key, "a number", value)
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise self.fail(key, "a string", value)
            return value
        if kind is Path:
            return self.path_value(key, value)
        if kind == Path | None:
            if value == "":
                return None
            return self.path_value(key, value)
        raise TypeError(f"config field {key} has unsupported type {kind!r}")  # a bug in this module, not the file

    def section(self, cls: type[_T], name: str, table: Any) -> _T:
        if not isinstance(table, Mapping):
            raise self.fail(f"[{name}]", "a table")
        hints = get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for key in table:
            if key not in known:
                raise self.fail(f"[{name}] {key}", "no such key (known: " + ", ".join(known) + ")")
        values: dict[str, Any] = {}
        for key, spec in known.items():
            if key not in table:
                continue
            label = f"[{name}] {key}"
            value = self.coerce(label, table[key], hints[key])
            check: Check | None = spec.metadata.get("check")
            problem = check(value) if check is not None else None
            if problem is not None:
                raise self.fail(label, problem, table[key])
            values[key] = value
        return cls(**values)

    def destination(self, index: int, table: Any) -> Destination:
        where = f"[[destinations]] #{index + 1}"
        if not isinstance(table, Mapping):
            raise self.fail(where, "a table")
        name = table.get("name")
        if not isinstance(name, str) or not _DESTINATION_NAME.match(name):
            raise self.fail(f"{where} name", "a name of letters, digits, '.', '_' or '-' (1-64)", name)
        where = f"[[destinations]] {name!r}"
        allowed = {"name", "folder"} if "folder" in table else {"name", "ae_title", "host", "port"}
        for key in table:
            if key not in allowed:
                hint = "a folder destination has only name and folder" if "folder" in table else (
                    "a DICOM destination has name, ae_title, host and port (or use folder = \"/path\")")
                raise self.fail(f"{where} {key}", f"no such key ({hint})")
        if "folder" in table:
            return FolderDestination(name=name, folder=self.path_value(f"{where} folder", table["folder"]))
        for key in ("ae_title", "host", "port"):
            if key not in table:
                raise self.fail(f"{where} {key}", "a value (a DICOM destination needs ae_title, host and port)")
        ae_title = self.coerce(f"{where} ae_title", table["ae_title"], str)
        problem = ae_title_problem(ae_title)
        if problem:
            raise self.fail(f"{where} ae_title", problem, ae_title)
        host = self.coerce(f"{where} host", table["host"], str)
        if not host.strip():
            raise self.fail(f"{where} host", "a host name or address", host)
        port = self.coerce(f"{where} port", table["port"], int)
        if not 1 <= port <= 65535:
            raise self.fail(f"{where} port", "a port from 1 to 65535", port)
        return DicomDestination(name=name, ae_title=ae_title, host=host, port=port)

    def config(self, document: Mapping[str, Any]) -> Config:
        for key in document:
            if key not in _SECTIONS and key != "destinations":
                raise self.fail(key, "no such section (known: " + ", ".join([*_SECTIONS, "destinations"]) + ")")
        sections = {name: self.section(cls, name, document.get(name, {})) for name, cls in _SECTIONS.items()}
        raw_destinations = document.get("destinations", [])
        if not isinstance(raw_destinations, list):
            raise self.fail("destinations", "an array of tables written as [[destinations]]")
        destinations = tuple(self.destination(i, table) for i, table in enumerate(raw_destinations))
        seen: set[str] = set()
        for destination in destinations:
            if destination.name in seen:
                raise self.fail(f"[[destinations]] {destination.name!r} name", "a name used by one destination only")
            seen.add(destination.name)
        send: SendConfig = sections["send"]
        if send.backoff_max < send.backoff_initial:
            raise self.fail("[send] backoff_max", f"a number of at least backoff_initial ({send.backoff_initial:g})",
                            send.backoff_max)
        return Config(destinations=destinations, source=self.path, **sections)


def load_config(path: Path) -> Config:
    """Read and validate the configuration file at ``path``.

    Parameters
    ----------
    path
        A TOML file; see ``config/segnode.toml`` for every key.

    Returns
    -------
    Config
        Frozen and fully validated; relative paths already resolved against ``path``'s folder.

    Raises
    ------
    ConfigError
        One line naming the file, the key and what is expected.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason}); save the file as UTF-8") from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    config = _Reader(path.absolute()).config(document)
    log.debug("loaded %s: %d destination(s)", path, len(config.destinations))
    return config
