"""Shared fixtures. Builders of synthetic data live in tests/synthetic.py, not here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import synthetic as syn

if TYPE_CHECKING:
    from node.service.node import Node


@pytest.fixture
def segnode_convert(capsys: pytest.CaptureFixture[str]) -> syn.ConvertRunner:
    """Run ``segnode convert ARGS`` in-process (``node.cli.main``); returns exit code, stdout and stderr."""

    def run(*args: str) -> syn.CliResult:
        # Imported here so that a missing or broken CLI fails these tests, not the whole collection.
        from node.cli import main

        capsys.readouterr()
        try:
            code = main(["convert", *args])
        except SystemExit as exc:  # argparse refusing the arguments
            code = exc.code if isinstance(exc.code, int) else 2
        out, err = capsys.readouterr()
        return syn.CliResult(code=code, stdout=out, stderr=err)

    return run


@pytest.fixture
def running() -> Iterator[list[Node]]:
    """Nodes a test starts and appends here are stopped even when it fails."""
    nodes: list[Node] = []
    yield nodes
    for node in nodes:
        node.stop()
