"""The receivers bench_ingest.py and bench_latency.py send to: ``segnode run``, storescp and a bare pynetdicom SCP.

Each is a :class:`peers.PeerProcess` (tests/peers.py) that is ready once it answers C-ECHO; storescp is the test
harness's :class:`dcmtk.StoreSCP` itself, run without its logging options, as it ships.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from dcmtk import StoreSCP, echoscu
from peers import HOST, PeerProcess

BARE_SCP = Path(__file__).resolve().with_name("bare_scp.py")


class EchoPeer(PeerProcess):
    """A receiving process on ``port``, ready once it answers C-ECHO as ``ae_title``."""

    def __init__(self, ae_title: str, port: int, log_path: Path) -> None:
        super().__init__(log_path)
        self.ae_title = ae_title
        self.port = port

    def ready(self) -> bool:
        return echoscu(self.port, called_ae=self.ae_title, calling_ae="BENCH", timeout=2).ok


@dataclass(frozen=True)
class NodeSettings:
    """The config keys the benchmarks vary; everything else is the node's default."""

    ae_title: str = "SEGNODE"
    quiet_seconds: float = 2.0
    settle_seconds: float = 0.5
    export_enabled: bool = True
    seg_type: str = "binary"
    log_level: str = "INFO"
    destination: tuple[str, str, int] | None = None  # (ae_title, host, port) of a DICOM destination
    receive_processes: int | None = None  # None: the node's default


class NodeProcess(EchoPeer):
    """``segnode run`` on ``port`` with a config (and fresh data folders) under ``root``."""

    name = "segnode"

    def __init__(self, root: Path, port: int, settings: NodeSettings, *, python: str = sys.executable) -> None:
        super().__init__(settings.ae_title, port, root / "segnode.log")
        self.root = root
        self.settings = settings
        self.python = python
        self.config_path = root / "segnode.toml"
        self.data = root / "data"
        self.inbox = self.data / "inbox"
        self.export = self.data / "export"

    def write_config(self) -> None:
        s = self.settings
        lines = [
            "[node]",
            f'ae_title = "{s.ae_title}"',
            f'bind = "{HOST}"',
            f"port = {self.port}",
            f'log_level = "{s.log_level}"',
            *([f"receive_processes = {s.receive_processes}"] if s.receive_processes is not None else []),
            "",
            "[paths]",
            'data = "data"',
            'inbox = "data/inbox"',
            'export = "data/export"',
            "",
            "[series]",
            f"quiet_seconds = {s.quiet_seconds}",
            "",
            "[inbox]",
            f"settle_seconds = {s.settle_seconds}",
            "",
            "[export]",
            f"enabled = {'true' if s.export_enabled else 'false'}",
            "",
            "[seg]",
            f'type = "{s.seg_type}"',
            "",
        ]
        if s.destination is not None:
            ae, host, port = s.destination
            lines += ["[[destinations]]", 'name = "pacs"', f'ae_title = "{ae}"', f'host = "{host}"', f"port = {port}"]
        else:
            lines += ["[[destinations]]", 'name = "outgoing"', 'folder = "data/outgoing"']
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [self.python, "-m", "node", "run", "--config", str(self.config_path)]

    def start(self, timeout: float = 60.0) -> None:
        self.write_config()
        super().start(timeout)

    def instance_count(self, series_uid: str) -> int:
        """Instance files the node's store holds for a series (temporary files excluded)."""
        folder = self.data / "instances" / series_uid
        if not folder.is_dir():
            return 0
        return sum(1 for p in folder.iterdir() if p.suffix == ".dcm" and not p.name.startswith("."))


class BareScpProcess(EchoPeer):
    """bare_scp.py: a pynetdicom storage SCP that only writes what it receives (see that script)."""

    name = "bare pynetdicom SCP"

    def __init__(self, root: Path, port: int, *, ae_title: str = "BARESCP") -> None:
        super().__init__(ae_title, port, root / "bare-scp.log")
        self.folder = root / "received"

    def command(self) -> list[str]:
        return [sys.executable, str(BARE_SCP), str(self.port), str(self.folder), self.ae_title]

    def start(self, timeout: float = 60.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        super().start(timeout)

    def instance_count(self) -> int:
        return sum(1 for p in self.folder.iterdir() if p.is_file())


def storescp(root: Path, port: int, *, nodelay: bool = True) -> StoreSCP:
    """DCMTK ``storescp -aet STORESCP -od ROOT/received PORT``: one association at a time, no fsync, no logging."""
    return StoreSCP(root / "received", ae_title="STORESCP", port=port, options=(), nodelay=nodelay)


#: What bench_ingest.py measures.
Receiver = NodeProcess | StoreSCP | BareScpProcess
