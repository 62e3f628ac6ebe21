"""Where SEGs go: one module per kind of destination behind one Protocol, and a registry by ``kind``.

A kind is two things, registered together by its module: a frozen config dataclass (the keys of its
``[[destinations]]`` block, validated by :func:`node.config.load_config`) and a factory that turns one such block
into a :class:`Destination`. The built-in kinds are ``dicom`` (:mod:`node.destinations.dimse`, C-STORE) and
``folder`` (:mod:`node.destinations.folder`).

Importing this package, or a kind's module, stays light (no pynetdicom): the network code of a kind loads when
its first destination is created.

>>> sorted(kinds())
['dicom', 'folder']
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from node.destinations.results import Outcome, SendResult, backoff_delay

if TYPE_CHECKING:
    from node.config.sections import TlsConfig  # the config imports this package: a type only

__all__ = [
    "Destination",
    "DestinationConfig",
    "Factory",
    "Outcome",
    "SendResult",
    "backoff_delay",
    "config_type",
    "create",
    "kinds",
    "register",
    "unregister",
]

#: Modules that register the built-in kinds when imported; loaded on the first registry look-up.
BUILTIN_KIND_MODULES = ("node.destinations.dimse", "node.destinations.folder")


class DestinationConfig(Protocol):
    """One validated ``[[destinations]]`` block: a frozen dataclass per kind, with ``kind`` as a class variable."""

    kind: ClassVar[str]
    #: How messages about the block's keys name the kind: "a DICOM destination needs ...".
    title: ClassVar[str]

    @property
    def name(self) -> str: ...

    def describe(self) -> str:
        """``pacs (PACS@10.0.0.5:104)``: the destination as the CLI and the logs name it."""
        ...


class Destination(Protocol):
    """A place SEGs can be sent to, made by :func:`create` from its config block."""

    @property
    def name(self) -> str: ...

    def send(self, paths: Sequence[Path]) -> list[SendResult]:
        """Send a batch of files; one result per path, in order. Never raises for trouble at the destination."""
        ...

    def check(self) -> str | None:
        """Whether the destination can be reached now: None if so, else one line saying why not."""
        ...

    def describe(self) -> str:
        """The destination for a person: name and address."""
        ...


class Factory(Protocol):
    """Makes a kind's :class:`Destination` from its config block (an instance of the kind's config type).

    ``tls`` is the node's ``[tls]`` section (None when the caller has none), given to every kind: one whose blocks
    may ask for TLS uses it, any other takes it as ``tls: object = None`` and ignores it.
    """

    def __call__(self, config: Any, *, calling_ae: str, timeout: float, tls: TlsConfig | None) -> Destination: ...


_factories: dict[str, Factory] = {}
_config_types: dict[str, type[DestinationConfig]] = {}
_builtins_loaded = False


def register(kind: str, factory: Factory, config_type: type[DestinationConfig]) -> None:
    """Make ``kind`` known: blocks with ``kind = "<kind>"`` load as ``config_type`` and are created by ``factory``.

    Raises ValueError if ``config_type.kind`` is not ``kind`` or the kind is already registered to another type.
    """
    if getattr(config_type, "kind", None) != kind:
        raise ValueError(f"destination kind {kind!r}: {config_type.__name__}.kind must be {kind!r}")
    known = _config_types.get(kind)
    if known is not None and known is not config_type:
        raise ValueError(f"destination kind {kind!r} is already registered (by {known.__module__}.{known.__name__})")
    _factories[kind] = factory
    _config_types[kind] = config_type


def unregister(kind: str) -> None:
    """Forget ``kind`` (for tests and plug-ins that registered one); unknown kinds are ignored."""
    _factories.pop(kind, None)
    _config_types.pop(kind, None)


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        for module in BUILTIN_KIND_MODULES:
            importlib.import_module(module)
        _builtins_loaded = True


def kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order (built-in ones first)."""
    _load_builtins()
    return tuple(_config_types)


def config_type(kind: str) -> type[DestinationConfig]:
    """The config dataclass of ``kind``; KeyError naming the known kinds otherwise."""
    _load_builtins()
    try:
        return _config_types[kind]
    except KeyError:
        raise KeyError(f"unknown destination kind {kind!r} (known: {', '.join(_config_types)})") from None


def create(
    config_block: DestinationConfig, *, calling_ae: str, timeout: float, tls: TlsConfig | None = None
) -> Destination:
    """The :class:`Destination` for one validated config block, by its ``kind``.

    Parameters
    ----------
    config_block
        One entry of ``Config.destinations``.
    calling_ae
        Our AE title (``[node] ae_title``), for kinds that speak DICOM.
    timeout
        Seconds allowed for connecting and for each answer (``[send] timeout``).
    tls
        The node's ``[tls]`` section (``Config.tls``): what a block with ``tls = true`` verifies the peer against
        and presents as client certificate. Every kind's factory is given it; nothing loads ``ssl`` here.

    Raises
    ------
    ConfigError
        The block cannot work as configured (e.g. a DICOM block with ``tls = true`` but no ``tls`` given).
    """
    config_type(config_block.kind)  # loads the built-in kinds; KeyError naming the known ones
    return _factories[config_block.kind](config_block, calling_ae=calling_ae, timeout=timeout, tls=tls)
