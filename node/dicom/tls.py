"""DICOM TLS (PS3.15 B.1, the basic TLS secure transport connection profile): the SSL contexts of both roles.

The listener's context presents ``[tls] certificate`` and, when ``ca_certificates`` is set, verifies client
certificates against it (required with ``require_client_certificate``). A destination with ``tls = true`` verifies
the server against ``ca_certificates`` and its host name, and presents the node's certificate when one is set.
TLS 1.2 is the floor: PS3.15's current profiles (BCP 195) no longer allow older versions.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.config.sections import TlsConfig


class TlsFileError(ValueError):
    """A [tls] file that exists but does not load: which key, which file, and what was expected."""

    def __init__(self, key: str, path: Path, expected: str) -> None:
        super().__init__(f"[tls] {key}: {path}: expected {expected}")
        self.key = key
        self.path = path
        self.expected = expected


def _reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


def _load_chain(context: ssl.SSLContext, tls: TlsConfig) -> None:
    assert tls.certificate is not None and tls.private_key is not None
    try:
        context.load_cert_chain(tls.certificate, tls.private_key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsFileError(
            "certificate",
            tls.certificate,
            f"a PEM certificate matching private_key {tls.private_key} ({_reason(exc)})",
        ) from None


def _load_ca(context: ssl.SSLContext, tls: TlsConfig) -> None:
    assert tls.ca_certificates is not None
    try:
        context.load_verify_locations(cafile=tls.ca_certificates)
    except (ssl.SSLError, OSError) as exc:
        raise TlsFileError(
            "ca_certificates", tls.ca_certificates, f"a PEM bundle of CA certificates ({_reason(exc)})"
        ) from None


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """The listener's context. Raises :class:`TlsFileError` for a file that does not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, tls)
    if tls.ca_certificates is not None:
        _load_ca(context, tls)
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    return context


def client_context(tls: TlsConfig) -> ssl.SSLContext:
    """A TLS destination's context: the server verified against ``ca_certificates`` and its host name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.ca_certificates is not None:
        _load_ca(context, tls)
    if tls.certificate is not None and tls.private_key is not None:
        _load_chain(context, tls)
    return context


def check_files(tls: TlsConfig) -> None:
    """Load every configured [tls] file once, as start-up and a reload do; :class:`TlsFileError` if one fails."""
    if tls.port:
        server_context(tls)
    if tls.ca_certificates is not None:
        client_context(tls)
