"""Reading a configuration file: :func:`load_config` turns TOML into the frozen sections of
:mod:`node.config.sections`, validated once at start-up.

Unknown keys are rejected (a typo must not silently fall back to a default); every mistake is a
:class:`~node.errors.ConfigError` of one line naming the file, the key, the value and what is expected.
Relative paths in the file resolve against the folder that holds the file, so a config can travel with its data.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from node import destinations as kinds
from node.checks import Check
from node.config.sections import DESTINATION_NAME, SECTIONS, Config, SendConfig, TlsConfig
from node.destinations import DestinationConfig
from node.errors import ConfigError

log = logging.getLogger(__name__)

#: The kind of a [[destinations]] block without ``kind``, as files written before ``kind`` existed meant it: a
#: ``folder`` key makes it "folder" (checked first), any of ae_title, host, port "dicom". New kinds need ``kind``.
_LEGACY_KIND_KEYS = (("folder", frozenset({"folder"})), ("dicom", frozenset({"ae_title", "host", "port"})))

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

    def __init__(self, path: Path, base: Path | None = None) -> None:
        self.path = path
        self.base = base or path.parent

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
        if kind == tuple[str, ...]:
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise self.fail(key, 'a list of strings, like ["A", "B"]', value)
            return tuple(value)
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
        if not isinstance(name, str) or not DESTINATION_NAME.match(name):
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
            if key not in SECTIONS and key != "destinations":
                raise self.fail(key, "no such section (known: " + ", ".join([*SECTIONS, "destinations"]) + ")")
        sections = {name: self.section(cls, name, document.get(name, {})) for name, cls in SECTIONS.items()}
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
        self.check_tls(sections["tls"], sections["node"].port, destinations)
        return Config(destinations=destinations, source=self.path, **sections)

    def check_tls(self, tls: TlsConfig, node_port: int, destinations: tuple[DestinationConfig, ...]) -> None:
        """What [tls] needs besides its own keys: files for a listener, a CA bundle to verify against.

        The files are only checked to be there: loading them (:func:`check_tls_files`) needs the private key,
        which `segnode status` and the other read-only commands have no reason to read.
        """
        if tls.port and (tls.certificate is None or tls.private_key is None):
            raise self.fail("[tls] certificate", "a PEM certificate and private_key when [tls] port is set")
        if (tls.certificate is None) != (tls.private_key is None):
            raise self.fail("[tls] private_key", "a private key with the certificate, or neither of them")
        if tls.port and tls.port == node_port and tls.plain:
            raise self.fail("[tls] port", f"a port other than [node] port ({node_port})", tls.port)
        if not tls.plain and not tls.port:
            raise self.fail("[tls] plain", "true unless [tls] port opens a TLS listener", tls.plain)
        if tls.require_client_certificate and tls.ca_certificates is None:
            raise self.fail("[tls] ca_certificates", "a PEM bundle to verify client certificates against")
        for destination in destinations:
            if getattr(destination, "tls", False) and tls.ca_certificates is None:
                raise self.fail(
                    "[tls] ca_certificates", f"a PEM bundle to verify destination {destination.name!r} against"
                )
        for key in ("certificate", "private_key", "ca_certificates"):
            path: Path | None = getattr(tls, key)
            if path is not None and not path.is_file():
                raise self.fail(f"[tls] {key}", "a readable PEM file", str(path))


def check_tls_files(config: Config) -> None:
    """Load ``config``'s [tls] files once, as the node will: `run`, `check-config` and a reload call it.

    Raises
    ------
    ConfigError
        A certificate, key or CA bundle does not load: names the key, the file and what is expected.
    """
    tls = config.tls
    if not tls.port and tls.ca_certificates is None:
        return
    from node.dicom.tls import TlsFileError, check_files  # ssl loads only where TLS is configured

    try:
        check_files(tls)
    except TlsFileError as exc:
        raise _Reader(config.source or Path("config")).fail(f"[tls] {exc.key}", exc.expected, str(exc.path)) from None


def load_config(path: Path, *, located_at: Path | None = None) -> Config:
    """Read and validate the configuration file at ``path``.

    Parameters
    ----------
    path
        A TOML file; see ``config/segnode.toml`` for every key.
    located_at
        Read it as if it were there: relative paths resolve against that file's folder (``segnode
        install-service`` reads the file it will copy as the copy).

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
    base = located_at.absolute().parent if located_at is not None else None
    config = _Reader(path.absolute(), base).config(document)
    log.debug("loaded %s: %d destination(s)", path, len(config.destinations))
    return config
