"""DCMTK command-line peers for tests: storescu, echoscu and storescp, each bounded by a timeout.

    result = storescu(port, [file1, file2], called_ae="SEGNODE")
    assert result.ok, result.output

    with StoreSCP(tmp_path / "received", ae_title="PACS") as pacs:
        ...  # C-STORE to ("127.0.0.1", pacs.port, "PACS"); files land in tmp_path / "received"

DCMTK is the Debian package ``dcmtk``; tests that need it use ``@requires_dcmtk`` and skip without it. Debian's
DCMTK leaves Nagle's algorithm on unless ``TCP_NODELAY=1`` is in the environment, which makes each small PDU wait
for a delayed ACK; every process started here gets it (see :func:`peers.dcmtk_env`). The benchmarks use these
helpers too (bench/receivers.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from peers import HOST, PeerProcess, dcmtk_env, free_port

__all__ = [
    "HOST",
    "StoreSCP",
    "ToolResult",
    "dcmtk_env",
    "echoscu",
    "free_port",
    "requires_dcmtk",
    "run_tool",
    "storescu",
    "storescu_config",
    "wait_for_echo",
]

TOOL_TIMEOUT_S = 60.0
START_TIMEOUT_S = 20.0

requires_dcmtk = pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK is not installed (dcmtk)")


@dataclass(frozen=True)
class ToolResult:
    """What a DCMTK tool did: its exit code and everything it printed (stdout then stderr)."""

    args: tuple[str, ...]
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def statuses(self) -> list[int]:
        """The DIMSE statuses of the responses, in order (from the ``-d`` log that :func:`storescu` asks for)."""
        return [int(code, 16) for code in re.findall(r"DIMSE Status\s*:\s*0x([0-9A-Fa-f]{4})", self.output)]


def run_tool(args: Sequence[str], *, timeout: float = TOOL_TIMEOUT_S) -> ToolResult:
    """Run one DCMTK command with TCP_NODELAY=1 and a timeout; output captured (never raises on failure)."""
    try:
        completed = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dcmtk_env(),
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return ToolResult(tuple(args), -9, f"{out}\n[timed out after {timeout:g} s]")
    return ToolResult(tuple(args), completed.returncode, completed.stdout + completed.stderr)


def association_args(calling_ae: str, called_ae: str, timeout: float) -> list[str]:
    """The AE titles and the connection, ACSE and DIMSE timeouts (whole seconds, at least 1) of a DCMTK SCU."""
    seconds = str(max(1, int(timeout)))
    return ["-aet", calling_ae, "-aec", called_ae, "-to", seconds, "-ta", seconds, "-td", seconds]


def echoscu(
    port: int,
    *,
    called_ae: str = "ANY-SCP",
    calling_ae: str = "ECHOSCU",
    host: str = HOST,
    timeout: float = TOOL_TIMEOUT_S,
) -> ToolResult:
    """C-ECHO the peer at ``host:port``."""
    args = ["echoscu", *association_args(calling_ae, called_ae, timeout), host, str(port)]
    return run_tool(args, timeout=timeout + 5)


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    called_ae: str = "ANY-SCP",
    calling_ae: str = "STORESCU",
    host: str = HOST,
    extra_args: Sequence[str] = ("-R",),
    timeout: float = TOOL_TIMEOUT_S,
) -> ToolResult:
    """C-STORE ``files`` to ``host:port`` in one association, with debug output (so :meth:`ToolResult.statuses` works).

    The default ``-R`` proposes each file's SOP class with the uncompressed transfer syntaxes only: a compressed
    file then fails (storescu cannot decompress JPEG); pass :func:`storescu_config` as ``extra_args`` to send
    files in their own transfer syntax. storescu exits non-zero when it could not associate; a refused instance
    shows in the statuses.
    """
    args = ["storescu", "-d", *association_args(calling_ae, called_ae, timeout), *extra_args, host, str(port)]
    return run_tool([*args, *(str(f) for f in files)], timeout=timeout + 5)


def storescu_config(folder: Path, sop_class_uid: str, transfer_syntaxes: Sequence[str]) -> list[str]:
    """storescu arguments proposing ``sop_class_uid`` once per transfer syntax (a ``-xf`` config file in ``folder``).

    Each file is then sent in its own transfer syntax, whatever it is.
    """
    lines = ["[[TransferSyntaxes]]"]
    for i, uid in enumerate(transfer_syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {uid}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    lines += [f"PresentationContext{i + 1} = {sop_class_uid}\\TS{i}" for i in range(len(transfer_syntaxes))]
    lines += ["[[Profiles]]", "[Each]", "PresentationContexts = Contexts"]
    path = Path(folder) / "storescu-each-ts.cfg"
    path.write_text("\n".join(lines) + "\n")
    return ["-xf", str(path), "Each"]


def wait_for_echo(port: int, *, called_ae: str = "ANY-SCP", timeout: float = START_TIMEOUT_S) -> None:
    """Return once the peer answers C-ECHO; AssertionError with the last answer after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = echoscu(port, called_ae=called_ae, timeout=5)
        if last.ok:
            return
        time.sleep(0.1)
    raise AssertionError(f"no C-ECHO answer on port {port} within {timeout:g} s: {last.output if last else ''}")


class StoreSCP(PeerProcess):
    """A DCMTK storescp writing the files it receives to ``folder``; ready once it answers C-ECHO.

    Parameters
    ----------
    folder
        Where received instances are written (created).
    ae_title
        The AE title storescp answers to.
    port
        Defaults to an OS-picked free port.
    options
        storescp options before ``-aet``; the default logs each request (``-v``) and accepts every transfer
        syntax (``+xa``) and unknown SOP class (``-pm``). The ingest bench passes ``()``: storescp as it ships.
    nodelay
        TCP_NODELAY=1 in storescp's environment (False: DCMTK as Debian ships it, Nagle's algorithm on).
    """

    name = "storescp"

    def __init__(
        self,
        folder: Path,
        *,
        ae_title: str = "STORESCP",
        port: int | None = None,
        options: Sequence[str] = ("-v", "+xa", "-pm"),
        nodelay: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.ae_title = ae_title
        self.port = port or free_port()
        self.options = tuple(options)
        self.nodelay = nodelay
        super().__init__(self.folder.parent / f"storescp-{self.port}.log")

    def command(self) -> list[str]:
        return ["storescp", *self.options, "-aet", self.ae_title, "-od", str(self.folder), str(self.port)]

    def env(self) -> dict[str, str]:
        return dcmtk_env(nodelay=self.nodelay)

    def ready(self) -> bool:
        return echoscu(self.port, called_ae=self.ae_title, timeout=2).ok

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        super().start(timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    def __enter__(self) -> StoreSCP:
        self.start()
        return self
