"""The DICOM kind's association set-up (pynetdicom SCU): our AE, the association, DICOM TLS, and why it failed.

pynetdicom only logs why a connection failed; :func:`unreachable_reason` finds out with one diagnostic attempt of
its own (TCP, then the TLS handshake for a TLS peer), so a send result says "connection refused" or "server
certificate not trusted (...)" instead of a traceback in the log. The TLS context is built only for a block with
``tls = true``, once per ``[tls]`` section and state of its files
(:func:`node.destinations.dimse_scu.client_context_for`).
"""

from __future__ import annotations

import errno
import socket
import ssl
from typing import Protocol

from pynetdicom import AE, evt
from pynetdicom.association import Association

from node.errors import ConfigError

#: Seconds a second, diagnostic connection attempt may take when the association could not connect.
PROBE_TIMEOUT_S = 5.0


class DicomPeer(Protocol):
    """Anything with a DICOM destination's fields (``DicomDestination`` from the configuration)."""

    @property
    def name(self) -> str: ...
    @property
    def ae_title(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def tls(self) -> bool: ...

    def describe(self) -> str:
        """``pacs (PACS@10.0.0.5:104)``, with ``, TLS`` when so: the one place the string is built."""
        ...


def describe_peer(dest: DicomPeer) -> str:
    """``PACS pacs (PACS@10.0.0.5:104)``: how reasons and logs name a DICOM destination (``, TLS`` when so)."""
    return f"PACS {dest.describe()}"


def _tls_reason(context: ssl.SSLContext, raw: socket.socket, host: str) -> str | None:
    """The TLS handshake on a connected socket, for its error: why a TLS association could not be opened (None:
    the handshake worked this time)."""
    try:
        with context.wrap_socket(raw, server_hostname=host):
            return None
    except ssl.SSLCertVerificationError as exc:
        detail = exc.verify_message or exc.reason or "verification failed"
        return (
            f"TLS handshake failed: the server's certificate is not trusted ({detail}); check [tls]"
            f" ca_certificates and the name {host!r} against the certificate the PACS presents"
        )
    except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
        return "TLS handshake failed: the peer closed the connection (is it a plain DICOM port, not a TLS one?)"
    except ssl.SSLError as exc:
        return f"TLS handshake failed ({exc.reason or exc}); check that the port speaks DICOM TLS"
    except TimeoutError:
        return "TLS handshake timed out (is it a plain DICOM port, not a TLS one?)"
    except OSError as exc:
        # Anything else the network says mid-handshake (connection aborted, host unreachable, ...): still one
        # line for the send result, never an exception out of the Deliver stage.
        return f"TLS handshake failed ({exc.strerror or exc})"


def connect_failure(dest: DicomPeer, timeout: float, tls: ssl.SSLContext | None = None) -> str:
    """The line for an association that could not connect: ``PACS ... unreachable: connection refused``, or for a
    TLS peer whose port answered, ``PACS ...: TLS handshake failed: ...``."""
    who = describe_peer(dest)
    reason = unreachable_reason(dest, timeout, tls)
    return f"{who}: {reason}" if reason.startswith("TLS") else f"{who} unreachable: {reason}"


def unreachable_reason(dest: DicomPeer, timeout: float, tls: ssl.SSLContext | None = None) -> str:
    """Why no connection could be made, found by one attempt of our own (pynetdicom only logs it): TCP, then
    for a TLS peer the handshake."""
    # The association attempt already waited its full timeout; the probe only needs to name the error.
    probe_timeout = min(timeout, PROBE_TIMEOUT_S)
    try:
        raw = socket.create_connection((dest.host, dest.port), timeout=probe_timeout)
    except socket.gaierror as exc:
        return f"cannot resolve host name ({exc.strerror or exc})"
    except TimeoutError:
        return "connection timed out"
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            return "connection refused"
        return (exc.strerror or str(exc)).lower()
    with raw:
        problem = None if tls is None else _tls_reason(tls, raw, dest.host)
    return problem or "could not open an association (the port answered a moment later)"


def association_failure(
    dest: DicomPeer, assoc: Association, connected: bool, timeout: float, tls: ssl.SSLContext | None = None
) -> str:
    """One line saying why ``assoc`` was not established: unreachable, rejected, no answer or aborted."""
    who = describe_peer(dest)
    if not connected:
        return connect_failure(dest, timeout, tls)
    answer = getattr(assoc.acceptor, "primitive", None)
    if assoc.is_rejected and answer is not None:
        hint = "; check the AE titles in the configuration and on the PACS" if "AE title" in answer.reason_str else ""
        return (
            f"{who} rejected the association ({answer.result_str.lower()}, {answer.source_str}: "
            f"{answer.reason_str}){hint}"
        )
    if answer is None:
        # Over TLS a server that refuses our client certificate says so only after the handshake.
        client = "; does the PACS require a client certificate ([tls] certificate)?" if tls is not None else ""
        return f"{who} did not answer the association request within {timeout:g} s{client}"
    return f"{who} aborted the association"


def open_association(
    ae: AE, dest: DicomPeer, timeout: float, tls: ssl.SSLContext | None = None
) -> tuple[Association | None, bool]:
    """Associate (over TLS with ``tls``); returns the association (None if the host name did not resolve) and
    whether the connection (TCP, and the TLS handshake) was made.

    Raises ConfigError if the destination's AE title is not a valid one.
    """
    connected: list[bool] = []

    def on_open(event: evt.Event) -> None:
        connected.append(True)

    try:
        assoc = ae.associate(
            dest.host,
            dest.port,
            ae_title=dest.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, on_open)],
            tls_args=None if tls is None else (tls, dest.host),
        )
    except OSError:
        # Name resolution happens before pynetdicom's own error handling.
        return None, False
    except ValueError as exc:
        raise ConfigError(
            f"destination {dest.name}: AE title {dest.ae_title!r} cannot be used ({exc}); "
            "fix its ae_title in the configuration"
        ) from exc
    return assoc, bool(connected)


def new_ae(calling_ae: str, timeout: float) -> AE:
    """Our AE, with every pynetdicom timeout set to ``timeout``; ConfigError for an unusable AE title."""
    try:
        ae = AE(ae_title=calling_ae)
    except ValueError as exc:
        raise ConfigError(f"our AE title {calling_ae!r} cannot be used ({exc}); fix [node] ae_title") from exc
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae
