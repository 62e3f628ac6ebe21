"""A real PACS for tests: Orthanc on OS-picked loopback ports, driven over its REST API with urllib.

    with OrthancServer(tmp_path) as pacs:
        results = create(pacs.destination(), calling_ae="SEGNODE", timeout=30).send(paths)
        assert len(pacs.instances()) == len(paths)

Orthanc is the Debian package ``orthanc`` (``/usr/sbin/Orthanc``). Its storage, index and log live under the
test's ``tmp_path``; :meth:`OrthancServer.stop` then :meth:`OrthancServer.start` simulates a PACS that goes
down and comes back on the same ports with the same data. Tests that need it skip when it is not installed
(:func:`orthanc_binary` is None). When a test fails, the tail of Orthanc's log appears in pytest's captured
teardown output. bench/bench_latency.py uses it as its PACS.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from peers import HOST, PeerError, free_port, log_tail, stop_process

from node.config import DicomDestination

__all__ = ["HOST", "OrthancError", "OrthancServer", "free_port", "orthanc_binary"]

START_TIMEOUT_S = 30.0
REST_TIMEOUT_S = 30.0
SEG_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"})


def orthanc_binary() -> str | None:
    """Path of the Orthanc executable, or None if it is not installed."""
    found = shutil.which("Orthanc")
    if found:
        return found
    return "/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None


class OrthancError(PeerError):
    """Orthanc did not start, or a REST call failed; the message ends with the tail of Orthanc's log."""


class OrthancServer:
    """One Orthanc process with its own storage under ``tmp_path``.

    Parameters
    ----------
    tmp_path
        Folder for the configuration, storage, index and log (a subfolder ``orthanc`` is created).
    aet
        Orthanc's own AE title.
    known_modalities
        DICOM peers Orthanc may C-STORE to: ``{name: (ae_title, host, port)}``; more can be added later with
        :meth:`add_modality`.
    accept_unknown_sop_classes
        Orthanc's "promiscuous mode". Orthanc 1.10 (DCMTK 3.6.7) does not know Label Map Segmentation Storage,
        so it rejects that SOP class unless this is True, as a real PACS of that age would.
    """

    def __init__(
        self,
        tmp_path: Path,
        *,
        aet: str = "ORTHANC",
        known_modalities: Mapping[str, tuple[str, str, int]] | None = None,
        accept_unknown_sop_classes: bool = False,
    ) -> None:
        binary = orthanc_binary()
        if binary is None:
            raise OrthancError("Orthanc is not installed (apt-get install orthanc)")
        self.binary = binary
        self.aet = aet
        self.root = Path(tmp_path) / "orthanc"
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path = self.root / "orthanc.json"
        self.log_path = self.root / "orthanc.log"
        self.known_modalities = dict(known_modalities or {})
        self.accept_unknown_sop_classes = accept_unknown_sop_classes
        self.dicom_port = 0
        self.http_port = 0
        self._process: subprocess.Popen[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def __enter__(self) -> OrthancServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop for good and print the log's tail: pytest shows captured teardown output only when a test fails.

        The process is killed: its storage is thrown away, and a graceful stop costs seconds per test.
        """
        self._terminate(graceful=False)
        print(f"--- tail of {self.log_path} ---\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _write_config(self) -> None:
        config: dict[str, Any] = {
            "Name": "segnode-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "UnknownSopClassAccepted": self.accept_unknown_sop_classes,
            "DicomModalities": {name: [ae, host, port] for name, (ae, host, port) in self.known_modalities.items()},
            "DicomModalitiesInDatabase": False,
            "DicomAssociationCloseDelay": 0,
            "DicomScuTimeout": 10,
            "DicomScpTimeout": 30,
            "Plugins": [],
            "LuaScripts": [],
            "WebDavEnabled": False,
            "OrthancExplorerEnabled": False,
            "MetricsEnabled": False,
            "SaveJobs": False,
            "StorageCompression": False,
            "OverwriteInstances": False,
            "HttpThreadsCount": 4,
            "DicomThreadsCount": 2,
            "ConcurrentJobs": 1,
            "StableAge": 2,
        }
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start Orthanc and wait until ``/system`` answers; the first start picks the ports, restarts reuse them."""
        if self.running:
            return
        first = self.dicom_port == 0
        for attempt in range(3):
            if first:
                self.dicom_port, self.http_port = free_port(), free_port()
                while self.http_port == self.dicom_port:
                    self.http_port = free_port()
            self._write_config()
            with self.log_path.open("ab") as log:
                log.write(f"=== start {attempt + 1} on DICOM {self.dicom_port}, HTTP {self.http_port} ===\n".encode())
                log.flush()
                self._process = subprocess.Popen(
                    [self.binary, "--verbose", str(self.config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.root,
                    start_new_session=True,
                )
            if self._wait_ready(timeout):
                return
            self._terminate()
            if not first:
                break  # the ports were promised to the tests; another pair would not simulate a restart
        raise OrthancError(f"Orthanc did not start within {timeout:g} s\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                return False
            try:
                self.get_json("/system", timeout=2.0)
                return True
            except (OSError, OrthancError):
                time.sleep(0.1)
        return False

    def _terminate(self, *, graceful: bool = True) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, graceful=graceful)

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL if it lingers); the storage and ports stay for :meth:`start`."""
        self._terminate()

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    # -- DICOM side -----------------------------------------------------------------------------------------------

    def destination(self, name: str = "pacs") -> DicomDestination:
        """This Orthanc as a segnode destination."""
        return DicomDestination(name=name, ae_title=self.aet, host=HOST, port=self.dicom_port)

    # -- REST -----------------------------------------------------------------------------------------------------

    def rest(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        timeout: float = REST_TIMEOUT_S,
    ) -> bytes:
        """One REST call; raises :class:`OrthancError` (with the log tail) on an HTTP error status."""
        request = urllib.request.Request(f"http://{HOST}:{self.http_port}{path}", data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise OrthancError(f"{method} {path}: HTTP {exc.code} {detail}\n{self.log_tail()}") from exc

    def get_json(self, path: str, *, timeout: float = REST_TIMEOUT_S) -> Any:
        return json.loads(self.rest("GET", path, timeout=timeout))

    def post_json(self, path: str, content: Any) -> Any:
        return json.loads(self.rest("POST", path, json.dumps(content).encode()) or b"null")

    def upload(self, path: Path) -> str:
        """Store one DICOM file through REST; returns Orthanc's instance id."""
        answer = json.loads(self.rest("POST", "/instances", Path(path).read_bytes(), content_type="application/dicom"))
        return str(answer["ID"])

    def instances(self) -> list[str]:
        return [str(i) for i in self.get_json("/instances")]

    def series(self) -> list[str]:
        return [str(s) for s in self.get_json("/series")]

    def studies(self) -> list[str]:
        return [str(s) for s in self.get_json("/studies")]

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """``{keyword: value}`` of one stored instance (Orthanc's simplified tags)."""
        return dict(self.get_json(f"/instances/{instance_id}/simplified-tags"))

    def get_instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file, as Orthanc holds it."""
        return self.rest("GET", f"/instances/{instance_id}/file")

    def find_instance(self, sop_instance_uid: str) -> str | None:
        """Orthanc's id of the instance with this SOP Instance UID, or None."""
        found = json.loads(self.rest("POST", "/tools/lookup", sop_instance_uid.encode(), content_type="text/plain"))
        for entry in found:
            if entry.get("Type") == "Instance":
                return str(entry["ID"])
        return None

    def find_seg_instances(self) -> list[str]:
        """Ids of stored instances whose SOP class is Segmentation or Label Map Segmentation Storage."""
        return [i for i in self.instances() if self.instance_tags(i).get("SOPClassUID") in SEG_SOP_CLASSES]

    def add_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        """Let Orthanc C-STORE to a peer started after Orthanc (e.g. a node on a port picked later)."""
        self.rest("PUT", f"/modalities/{name}", json.dumps({"AET": ae_title, "Host": host, "Port": port}).encode())

    def push_series(self, resource_id: str, modality_name: str, *, timeout: float = 60.0) -> Any:
        """C-STORE a study, series or instance (Orthanc ids) to a known modality; returns when it is done."""
        body = {"Resources": [resource_id], "Synchronous": True, "Timeout": int(timeout)}
        return json.loads(
            self.rest("POST", f"/modalities/{modality_name}/store", json.dumps(body).encode(), timeout=timeout + 10)
            or b"null"
        )

    def echo(self, modality_name: str) -> bool:
        """Whether Orthanc's C-ECHO to a known modality succeeds."""
        try:
            self.rest("POST", f"/modalities/{modality_name}/echo", b"{}")
        except OrthancError:
            return False
        return True
