"""The effective configuration: every key with the value the node uses, defaults included, as TOML.

``segnode check-config`` prints it, so what a default or a relative path became is never a guess. Empty paths
print as ``""`` (TOML has no null), which the reader reads back as "none".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import tomli_w

from node.config.sections import SECTIONS, Config


def _value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_value(item) for item in value]
    return value


def _table(section: Any) -> dict[str, Any]:
    return {field.name: _value(getattr(section, field.name)) for field in dataclasses.fields(section)}


def effective_document(config: Config) -> dict[str, Any]:
    """``config`` as a TOML document: one table per section, then one [[destinations]] table per destination."""
    document: dict[str, Any] = {name: _table(getattr(config, name)) for name in SECTIONS}
    document["destinations"] = [
        {"name": block.name, "kind": block.kind, **{k: v for k, v in _table(block).items() if k != "name"}}
        for block in config.destinations
    ]
    return document


def effective_toml(config: Config) -> str:
    """The TOML text of :func:`effective_document`; loading it gives back an equal configuration."""
    document = effective_document(config)
    destinations = document.pop("destinations")
    # tomli_w writes short tables of an array inline, at the top; [[destinations]] blocks read as the file does.
    blocks = ["[[destinations]]\n" + tomli_w.dumps(block) for block in destinations]
    return "\n".join([tomli_w.dumps(document), *blocks])
