"""Why a reader is not online: it is silent, or it answers and its session is refused.

libosdp (the 3.2 Python API) reports both as offline. It names the cause only in its C log
on stderr ("Failed to verify PD cryptogram", "CHLNG failed"), and the binding has no log
callback to capture that through. The structured evidence it does expose is the reader's
identity from its osdp_PDID reply (``OsdpPanel.identity``): with ENFORCE_SECURE the steps
after osdp_ID are the capability query and the secure channel handshake, so a reader that
answered osdp_ID yet never came online was refused in the handshake, almost always
because its key (SCBK) is not ours.

libosdp keeps the identity after a reader falls silent, so only an identity not seen in
the reader's last session on this panel counts (a fresh panel has none). A reader rebooted
with another key but the same identity therefore reads as silent: this API cannot tell
those apart, and a refused reader that is then unplugged still reads as refused. The cause
is named after ``SIGHTINGS`` failed attempts in a row, so a reader that booted just before
a check (it answered osdp_ID, the handshake still running) is not reported refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.driver import DeviceState

SIGHTINGS = 2
"""Failed attempts in a row, each with the reader answering, before it is reported refused."""


@dataclass(frozen=True)
class Cause:
    counter: str
    state: DeviceState
    level: int
    message: str


SILENT = Cause("offline", DeviceState.OFFLINE, logging.WARNING, "reader does not answer")
REFUSED = Cause("secure_channel_refused", DeviceState.ERROR, logging.ERROR,
                "the reader answers but the secure channel was refused: its key (SCBK) is "
                "probably not the one in key_file")


class SessionDiagnosis:
    """One reader on one panel: which cause its failed attempts point to."""

    def __init__(self) -> None:
        self._last_session: tuple[int, ...] | None = None
        self._sightings = 0

    def online(self, identity: tuple[int, ...] | None) -> None:
        """A session came up: that identity is old news from now on."""
        self._last_session = identity
        self._sightings = 0

    def failed(self, identity: tuple[int, ...] | None) -> Cause | None:
        """After an attempt that did not bring the reader online; None while undecided."""
        if identity is None or identity == self._last_session:
            self._sightings = 0
            return SILENT
        self._sightings += 1
        return REFUSED if self._sightings >= SIGHTINGS else None
