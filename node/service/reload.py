"""What a SIGHUP reload reads: the configuration file again, checked as at start-up and a little more.

Destinations, access lists, limits, ``[disk]``, TLS files, the default label table and ``[seg]`` can change while
the node runs; what needs new sockets, folders or processes is reported as taking a restart.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from node.config import Config, NodeConfig, check_tls_files, load_config
from node.convert.label_tables import read_label_table
from node.errors import ConfigError, SegnodeError, error_line

log = logging.getLogger(__name__)

#: What a reload cannot change: these need new sockets, folders or processes, so they take a restart.
RESTART_KEYS: tuple[tuple[str, Callable[[Config], object]], ...] = (
    ("[paths]", lambda c: c.paths),
    ("[http]", lambda c: c.http),
    ("[inbox]", lambda c: c.inbox),
    # The log formatters and the status page's warnings take it at start; QC would switch at once: one policy.
    ("[logging]", lambda c: c.logging),
    ("[node] ae_title, bind, port and receive_processes", lambda c: _fixed_node(c.node)),
)


def _fixed_node(node: NodeConfig) -> tuple[object, ...]:
    return node.ae_title, node.bind, node.port, node.receive_processes


def _keep_running(fresh: Config, current: Config) -> Config:
    """``fresh`` with what takes a restart as it runs now, so the whole node goes on with one configuration."""
    node = dataclasses.replace(
        fresh.node,
        ae_title=current.node.ae_title,
        bind=current.node.bind,
        port=current.node.port,
        receive_processes=current.node.receive_processes,
    )
    return dataclasses.replace(
        fresh, node=node, paths=current.paths, http=current.http, inbox=current.inbox, logging=current.logging
    )


def read_again(current: Config) -> Config:
    """``current``'s file read again, its TLS files and label table loaded once; what takes a restart is
    logged and keeps its running value.

    Raises
    ------
    ConfigError
        The file is missing or invalid, or its label table or TLS files do not load.
    """
    source = current.source
    if source is None:
        raise ConfigError("the configuration was not read from a file, so there is nothing to reload")
    fresh = load_config(source)
    check_tls_files(fresh)  # a certificate that does not load fails here, before anything changes
    if fresh.seg.labels is not None:
        try:
            read_label_table(fresh.seg.labels)
        except SegnodeError as exc:
            raise ConfigError(f"{source}: [seg] labels: {error_line(exc)}") from exc
    for key, part in RESTART_KEYS:
        if part(fresh) != part(current):
            log.warning("reload: %s changed; that takes effect at the next restart", key)
    return _keep_running(fresh, current)


def summary(config: Config) -> str:
    """One line on what a reload applied."""
    return (
        f"{len(config.destinations)} destination(s), {len(config.node.allowed_calling_aets)} allowed calling AE"
        f" title(s), {len(config.node.allowed_sources)} allowed source(s)"
    )
