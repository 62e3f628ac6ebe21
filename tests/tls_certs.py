"""A throw-away PKI made with ``openssl`` for the DICOM TLS tests: one CA, a server and a client certificate.

The server certificate names ``localhost`` and ``127.0.0.1``, so host-name verification passes on loopback.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_certificate: Path
    server_key: Path
    client_certificate: Path
    client_key: Path
    #: A CA nobody here trusts, and a client certificate it signed.
    stranger_ca: Path
    stranger_certificate: Path
    stranger_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=folder,
    )  # fmt: skip
    return folder / f"{name}.pem", folder / f"{name}.key"


def _signed(folder: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder,
    )  # fmt: skip
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=folder,
    )  # fmt: skip
    return folder / f"{name}.pem", folder / f"{name}.key"


def make_pki(folder: Path) -> Pki:
    """Certificates in ``folder`` (skips the test when openssl is missing)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (scripts/setup.sh --test installs it)")
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    server = _signed(
        folder,
        "server",
        ca,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
    )
    client = _signed(folder, "client", ca, "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n")
    stranger_ca = _ca(folder, "stranger-ca")
    stranger = _signed(folder, "stranger", stranger_ca, "extendedKeyUsage=clientAuth\n")
    return Pki(ca[0], *server, *client, stranger_ca[0], *stranger)
