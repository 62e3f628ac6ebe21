"""The configuration's sections: one frozen dataclass per TOML table, each key's default and check on its field.

Every key has its default here and nowhere else; a field's ``metadata["check"]`` says what a value must be
(:mod:`node.checks`). :mod:`node.config.reader` turns a file into these; :mod:`node.config.effective` turns them
back into TOML for ``segnode check-config``.
"""

from __future__ import annotations

import ipaddress
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.checks import ae_title_problem, checked, choice, each, not_empty, number_range
from node.destinations import DestinationConfig
from node.errors import ConfigError

#: SEG types the builder knows (values of ``node.convert.seg.SegType``; strings, so loading a config stays light).
SEG_TYPES = ("binary", "labelmap", "fractional")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
#: Placeholders an export command may use; anything else in braces is a typo.
EXPORT_PLACEHOLDERS = frozenset({"nifti", "series_uid", "inbox", "sidecar"})

DESTINATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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


def source_problem(value: str) -> str | None:
    """
    >>> source_problem("10.0.0.0/8") is None, source_problem("fd00::1") is None, source_problem("10.0.0.300")
    (True, True, 'an IP address or CIDR block such as 10.1.2.3, 10.0.0.0/8 or fd00::/8')
    """
    try:
        ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        return "an IP address or CIDR block such as 10.1.2.3, 10.0.0.0/8 or fd00::/8"
    return None


def _max_pdu(value: int) -> str | None:
    # PS3.8 D.3.3.2.1: 0 means no limit; pynetdicom refuses less than the smallest useful PDU.
    return None if value == 0 or 4096 <= value <= 2**32 - 1 else "0 (no limit) or a size from 4096 to 4294967295 bytes"


@dataclass(frozen=True)
class NodeConfig:
    """``[node]``: the DICOM listener and who may use it."""

    ae_title: str = checked("SEGNODE", ae_title_problem)
    bind: str = checked("0.0.0.0", not_empty)
    port: int = checked(11112, number_range(1, 65535))
    #: Calling AE titles allowed to associate; empty: any.
    allowed_calling_aets: tuple[str, ...] = checked((), each(ae_title_problem))
    #: Peer addresses (IPv4/IPv6 addresses or CIDR blocks) allowed to connect; empty: any.
    allowed_sources: tuple[str, ...] = checked((), each(source_problem))
    #: Reject associations whose called AE title is not ``ae_title``.
    require_called_aet: bool = True
    #: Associations open at once, over all receiver processes; more are rejected as transient.
    max_associations: int = checked(10, number_range(1, 1000))
    max_pdu: int = checked(1 << 20, _max_pdu)
    acse_timeout: float = checked(30.0, number_range(1.0, 3600.0))
    dimse_timeout: float = checked(60.0, number_range(1.0, 86400.0))
    network_timeout: float = checked(60.0, number_range(1.0, 86400.0))
    receive_processes: int = checked(2, number_range(1, 64))
    log_level: str = checked("INFO", choice(LOG_LEVELS))
    #: A stage whose last heartbeat is older than this is stalled: /healthz answers 503, the watchdog is not fed.
    stall_seconds: float = checked(600.0, number_range(1.0, 86400.0))


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
class TlsConfig:
    """``[tls]``: DICOM TLS (PS3.15 B.1, the basic TLS secure transport profile), receiving and sending."""

    #: 0: no TLS listener; otherwise the port of a TLS listener beside the plain one.
    port: int = checked(0, number_range(0, 65535))
    #: PEM certificate (chain) the node presents; needed for a TLS listener, and as client certificate.
    certificate: Path | None = None
    private_key: Path | None = None
    #: PEM bundle peers are verified against (clients when required, TLS destinations always).
    ca_certificates: Path | None = None
    require_client_certificate: bool = False
    #: false: only the TLS port listens.
    plain: bool = True


@dataclass(frozen=True)
class DiskConfig:
    """``[disk]``: free space kept for what is already accepted; past either limit new C-STOREs get A700."""

    reserve_mb: int = checked(1024, number_range(0, 1 << 30))
    max_usage_percent: float = checked(95.0, number_range(1.0, 100.0))


@dataclass(frozen=True)
class RetentionConfig:
    """``[retention]``: what is finished is removed after this many days; 0 keeps everything."""

    days: float = checked(30.0, number_range(0.0, 36500.0))


@dataclass(frozen=True)
class HttpConfig:
    """``[http]``: /healthz and /metrics (and the status page); loopback by default, ``port = 0`` disables it."""

    bind: str = checked("127.0.0.1", not_empty)
    port: int = checked(8080, number_range(0, 65535))


@dataclass(frozen=True)
class LoggingConfig:
    """``[logging]``: the log lines' shape, and whether patient data may appear in them."""

    format: str = checked("text", choice(LOG_FORMATS))
    include_phi: bool = False


@dataclass(frozen=True)
class QcConfig:
    """``[qc]``: a QC picture of every SEG in ``data/qc``, optionally sent along as a Secondary Capture."""

    enabled: bool = True
    #: Also send the picture to every DICOM destination as a Secondary Capture image in a series of its own.
    send: bool = False


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
    tls: TlsConfig = TlsConfig()
    disk: DiskConfig = DiskConfig()
    retention: RetentionConfig = RetentionConfig()
    http: HttpConfig = HttpConfig()
    logging: LoggingConfig = LoggingConfig()
    qc: QcConfig = QcConfig()
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


#: The tables of a file, in the order check-config prints them.
SECTIONS: dict[str, type[Any]] = {
    "node": NodeConfig,
    "paths": PathsConfig,
    "series": SeriesConfig,
    "inbox": InboxConfig,
    "export": ExportConfig,
    "seg": SegConfig,
    "send": SendConfig,
    "tls": TlsConfig,
    "disk": DiskConfig,
    "retention": RetentionConfig,
    "http": HttpConfig,
    "logging": LoggingConfig,
    "qc": QcConfig,
}
