"""The node's configuration: frozen dataclasses (:mod:`~node.config.sections`), read and validated once at
start-up by :func:`load_config` (:mod:`~node.config.reader`), and printed back as the effective configuration
(:mod:`~node.config.effective`).
"""

from __future__ import annotations

from pathlib import Path

from node.checks import ae_title_problem
from node.config.reader import check_tls_files, load_config
from node.config.sections import (
    Config,
    DiskConfig,
    ExportConfig,
    HttpConfig,
    InboxConfig,
    LoggingConfig,
    NodeConfig,
    PathsConfig,
    QcConfig,
    RetentionConfig,
    SegConfig,
    SendConfig,
    SeriesConfig,
    TlsConfig,
)
from node.destinations import DestinationConfig

# The built-in kinds' blocks, under the names callers have always imported them by.
from node.destinations.dimse import DicomDestination
from node.destinations.folder import FolderDestination
from node.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG",
    "Config",
    "ConfigError",
    "DestinationConfig",
    "DicomDestination",
    "DiskConfig",
    "ExportConfig",
    "FolderDestination",
    "HttpConfig",
    "InboxConfig",
    "LoggingConfig",
    "NodeConfig",
    "PathsConfig",
    "QcConfig",
    "RetentionConfig",
    "SegConfig",
    "SendConfig",
    "SeriesConfig",
    "TlsConfig",
    "ae_title_problem",
    "check_tls_files",
    "load_config",
]

#: Where `segnode run` and the other node commands look for the configuration (systemd/segnode.service too).
DEFAULT_CONFIG = Path("/etc/segnode/segnode.toml")
