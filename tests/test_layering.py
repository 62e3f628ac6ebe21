"""The layering of ARCHITECTURE.md, read from the imports of every module under node/ (parsed, not imported).

- ``node.convert`` is the pure engine: nothing from ``state``, ``dicom``, ``destinations``, ``pipeline``,
  ``service`` or ``config``;
- ``state``, ``dicom`` and ``destinations`` know nothing of ``pipeline`` or ``service``;
- only ``service`` and ``cli`` wire everything: nobody else imports ``node.service``;
- no module is over 400 lines (a module that needs section banners is two modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "node"
MAX_LINES = 400

#: (importer package, packages it must not import).
FORBIDDEN: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("node.convert", ("node.state", "node.dicom", "node.destinations", "node.pipeline", "node.service", "node.config")),
    ("node.state", ("node.pipeline", "node.service")),
    ("node.dicom", ("node.pipeline", "node.service")),
    ("node.destinations", ("node.pipeline", "node.service")),
)
#: The only modules (and packages) that may import ``node.service``.
SERVICE_USERS = ("node.service", "node.cli", "node.__main__")


def module_name(path: Path) -> str:
    """``node/convert/seg.py`` -> ``node.convert.seg``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(module: str, path: Path) -> set[str]:
    """Every module ``path`` imports, absolute, including ``from x import y`` as ``x.y`` (y may be a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_parser_sees_imports_of_every_kind(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "import node.state\nfrom node import dicom\nfrom ..pipeline import match\n"
        "def f():\n    from node.service.node import Node\n"
    )
    names = imported("node.convert.probe", source)
    assert {"node.state", "node.dicom", "node.pipeline.match", "node.service.node.Node"} <= names


def test_modules_are_found() -> None:
    found = modules()
    assert "node.convert" in found and "node.convert.seg" in found and "node.cli" in found


@pytest.mark.parametrize(("importer", "banned"), FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_lower_layers_do_not_import_higher_ones(importer: str, banned: tuple[str, ...]) -> None:
    offenders = sorted(
        f"{module} imports {name}"
        for module, path in modules().items()
        if within(module, importer)
        for name in imported(module, path)
        if any(within(name, b) for b in banned)
    )
    assert not offenders, f"{importer} must not import {', '.join(banned)}:\n  " + "\n  ".join(offenders)


def test_only_service_and_cli_import_the_service() -> None:
    offenders = sorted(
        f"{module} imports {name}"
        for module, path in modules().items()
        if not any(within(module, user) for user in SERVICE_USERS)
        for name in imported(module, path)
        if within(name, "node.service")
    )
    assert not offenders, "only node.service and node.cli may import node.service:\n  " + "\n  ".join(offenders)


def test_no_module_is_oversized() -> None:
    sizes = {module: len(path.read_text(encoding="utf-8").splitlines()) for module, path in modules().items()}
    offenders = sorted(
        f"{PACKAGE.name}/{modules()[m].relative_to(PACKAGE).as_posix()}: {n} lines"
        for m, n in sizes.items()
        if n > MAX_LINES
    )
    assert not offenders, f"modules over {MAX_LINES} lines (split them by concern):\n  " + "\n  ".join(offenders)
