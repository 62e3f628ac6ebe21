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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from node import destinations as kinds
from node.checks import Check, ae_title_problem, checked, choice, not_empty, number_range
from node.destinations import DestinationConfig

# The built-in kinds' blocks, under the names callers have always imported them by.
from node.destinations.dimse import DicomDestination
from node.destinations.folder import FolderDestination
from node.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "DestinationConfig",
    "DicomDestination",
    "FolderDestination",
    "ae_title_problem",
    "load_config",
]

log = logging.getLogger(__name__)

#: Where `segnode run` and the other node commands look for the configuration (systemd/segnode.service too).
DEFAULT_CONFIG = Path("/etc/segnode/segnode.toml")

#: SEG types the builder knows (values of ``node.convert.seg.SegType``; strings, so loading a config stays light).
SEG_TYPES = ("binary", "labelmap", "fractional")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: Placeholders an export command may use; anything else in braces is a typo.
EXPORT_PLACEHOLDERS = frozenset({"nifti", "series_uid", "inbox", "sidecar"})

_DESTINATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: The kind of a [[destinations]] block without ``kind``, as files written before ``kind`` existed meant it: a
#: ``folder`` key makes it "folder" (checked first), any of ae_title, host, port "dicom". New kinds need ``kind``.
_LEGACY_KIND_KEYS = (("folder", frozenset({"folder"})), ("dicom", frozenset({"ae_title", "host", "port"})))


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


@dataclass(frozen=True)
class NodeConfig:
    """``[node]``: the DICOM listener."""

    ae_title: str = checked("SEGNODE", ae_title_problem)
    bind: str = checked("0.0.0.0", not_empty)
    port: int = checked(11112, number_range(1, 65535))
    max_associations: int = checked(10, number_range(1, 1000))
    receive_processes: int = checked(2, number_range(1, 64))
    log_level: str = checked("INFO", choice(LOG_LEVELS))


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

    quiet_seconds: float = checked(30.0, number_range(0.0, 86400.0))


@dataclass(frozen=True)
class InboxConfig:
    """``[inbox]``: watching for segmentations."""

    settle_seconds: float = checked(5.0, number_range(0.0, 3600.0))
    poll: bool = False


@dataclass(frozen=True)
class ExportConfig:
    """``[export]``: NIfTI export of completed series and the optional per-site command run on each."""

    enabled: bool = True
    command: str = checked("", _export_command)
    command_timeout: float = checked(3600.0, number_range(1.0, 7 * 86400.0))


@dataclass(frozen=True)
class SegConfig:
    """``[seg]``: how SEG objects are built."""

    type: str = checked("binary", choice(SEG_TYPES))
    algorithm_name: str = checked("segnode", not_empty)
    #: Empty means "segnode's own version".
    algorithm_version: str = ""
    #: Default label table (names, colours, codes) for items without one; None for none.
    labels: Path | None = None
    series_description: str = "segnode SEG"


@dataclass(frozen=True)
class SendConfig:
    """``[send]``: C-STORE of SEGs to the destinations, with exponential backoff."""

    max_attempts: int = checked(10, number_range(1, 1000))
    backoff_initial: float = checked(5.0, number_range(0.0, 86400.0))
    backoff_max: float = checked(600.0, number_range(0.0, 7 * 86400.0))
    timeout: float = checked(30.0, number_range(1.0, 3600.0))


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
    destinations: tuple[DestinationConfig, ...] = ()
    #: The file this was loaded from (None for a default-constructed Config).
    source: Path | None = None

    def destination(self, name: str) -> DestinationConfig:
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


def _legacy_kind(table: Mapping[str, Any]) -> str | None:
    """The kind of a block without ``kind``, by its keys; None when they say nothing."""
    return next((kind for kind, keys in _LEGACY_KIND_KEYS if keys & table.keys()), None)


def _listing(words: list[str]) -> str:
    """
    >>> _listing(["name", "ae_title", "port"]), _listing(["name"])
    ('name, ae_title and port', 'name')
    """
    return " and ".join(filter(None, [", ".join(words[:-1]), *words[-1:]]))


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

    def values(
        self,
        cls: type[Any],
        where: str,
        table: Mapping[str, Any],
        *,
        skip: frozenset[str] = frozenset(),
        unknown_hint: str,
        missing_hint: str = "",
    ) -> dict[str, Any]:
        """The keys of ``table`` as ``cls``'s fields want them: known, coerced, checked; ``skip`` already read."""
        hints = get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
        for key in table:
            if key not in known and key not in skip:
                raise self.fail(f"{where} {key}", f"no such key ({unknown_hint})")
        values: dict[str, Any] = {}
        for key, spec in known.items():
            label = f"{where} {key}"
            if key not in table:
                if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                    raise self.fail(label, f"a value ({missing_hint})" if missing_hint else "a value")
                continue
            value = self.coerce(label, table[key], hints[key])
            check: Check | None = spec.metadata.get("check")
            problem = check(value) if check is not None else None
            if problem is not None:
                raise self.fail(label, problem, table[key])
            values[key] = value
        return values

    def section(self, cls: type[_T], name: str, table: Any) -> _T:
        if not isinstance(table, Mapping):
            raise self.fail(f"[{name}]", "a table")
        known = ", ".join(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        return cls(**self.values(cls, f"[{name}]", table, unknown_hint=f"known: {known}"))

    def destination(self, index: int, table: Any) -> DestinationConfig:
        """One [[destinations]] block, as the config dataclass of its ``kind`` (registered in node.destinations)."""
        where = f"[[destinations]] #{index + 1}"
        if not isinstance(table, Mapping):
            raise self.fail(where, "a table")
        name = table.get("name")
        if not isinstance(name, str) or not _DESTINATION_NAME.match(name):
            raise self.fail(f"{where} name", "a name of letters, digits, '.', '_' or '-' (1-64)", name)
        where = f"[[destinations]] {name!r}"
        known_kinds = ", ".join(repr(kind) for kind in kinds.kinds())
        kind = table.get("kind", _legacy_kind(table))
        if kind is None:
            raise self.fail(f"{where} kind", f"a value, one of {known_kinds}")
        try:
            cls = kinds.config_type(kind) if isinstance(kind, str) else None
        except KeyError:
            cls = None
        if cls is None:
            raise self.fail(f"{where} kind", f"one of {known_kinds}", kind)
        fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        required = [
            f.name
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.name != "name" and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        values = self.values(
            cls,
            where,
            table,
            skip=frozenset({"kind", "name"}),
            unknown_hint=f"a {cls.title} destination has only {_listing(fields)}",
            missing_hint=f"a {cls.title} destination needs {_listing(required)}",
        )
        make: Callable[..., DestinationConfig] = cls  # a dataclass, whatever the kind
        return make(name=name, **values)

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
            raise self.fail(
                "[send] backoff_max",
                f"a number of at least backoff_initial ({send.backoff_initial:g})",
                send.backoff_max,
            )
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
