#!/usr/bin/env python3
"""A bare pynetdicom storage SCP: one ``write()`` per instance, no fsync, no index; runs until killed.

What any receiver built on pynetdicom costs before it does its own work. bench_ingest.py runs it as
``python bench/bare_scp.py PORT FOLDER AE_TITLE`` (receivers.BareScpProcess) and compares it with the node and
storescp.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

HOST = "127.0.0.1"


def serve(port: int, folder: Path, ae_title: str) -> None:
    """Accept every storage SOP class (uncompressed) and C-ECHO on ``HOST:port``; write each instance to ``folder``."""

    def on_store(event: Any) -> int:
        name = str(event.request.AffectedSOPInstanceUID)
        (folder / f"{name}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title=ae_title)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_supported_context(Verification)
    ae.start_server((HOST, port), block=True, evt_handlers=[(evt.EVT_C_STORE, on_store)])


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit("usage: bare_scp.py PORT FOLDER AE_TITLE")
    serve(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
