"""Cutting records out of a byte stream: by delimiter, fixed length, or start/end bytes.

Fed with whatever bytes arrived; returns complete records and counts what it had to
throw away (oversized records, bytes outside start/end, partial records that went
stale). A framer never grows without bound: ``max_length`` caps the buffer.
"""

from __future__ import annotations

from collections import Counter

from drivers.serial_line.config import Framing


class Framer:
    def __init__(self, cfg: Framing) -> None:
        self.cfg = cfg
        self.buf = bytearray()
        self.problems: Counter[str] = Counter()
        self._skipping = False  # inside an oversized record: drop until its end
        self._cut = {"delimiter": self._delimited, "fixed": self._fixed,
                     "start_end": self._start_end}[cfg.mode]

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        return self._cut()

    def idle(self) -> None:
        """No bytes for ``idle_reset``: a partial record will never complete."""
        if self.buf:
            self.problems["truncated"] += 1
            self.buf.clear()
        self._skipping = False

    def _delimited(self) -> list[bytes]:
        delim, limit = self.cfg.delimiter_bytes, self.cfg.max_length
        out: list[bytes] = []
        while True:
            pos = self.buf.find(delim)
            if pos < 0:
                if len(self.buf) > limit + len(delim):
                    if not self._skipping:
                        self.problems["oversized"] += 1
                    self._skipping = True
                    keep = len(delim) - 1  # a delimiter may straddle the cut
                    del self.buf[:len(self.buf) - keep]
                return out
            record = bytes(self.buf[:pos])
            del self.buf[:pos + len(delim)]
            if self._skipping:
                self._skipping = False
                continue
            if len(record) > limit:
                self.problems["oversized"] += 1
                continue
            if record:
                out.append(record)

    def _fixed(self) -> list[bytes]:
        size, out = self.cfg.length or 1, []
        while len(self.buf) >= size:
            out.append(bytes(self.buf[:size]))
            del self.buf[:size]
        return out

    def _start_end(self) -> list[bytes]:
        start, end, limit = self.cfg.start_bytes, self.cfg.end_bytes, self.cfg.max_length
        out: list[bytes] = []
        while True:
            begin = self.buf.find(start)
            if begin < 0:
                keep = len(start) - 1
                if len(self.buf) > keep:
                    self.problems["noise_bytes"] += len(self.buf) - keep
                    del self.buf[:len(self.buf) - keep]
                return out
            if begin:
                self.problems["noise_bytes"] += begin
                del self.buf[:begin]
            # The first end closes the record, even if start bytes occur inside (binary
            # data may contain them); a record cut short fails its pattern and is counted.
            stop = self.buf.find(end, len(start))
            if stop < 0:
                if len(self.buf) > limit + len(start) + len(end):
                    self.problems["oversized"] += 1
                    del self.buf[:len(start)]
                return out
            record = bytes(self.buf[len(start):stop])
            del self.buf[:stop + len(end)]
            if len(record) > limit:
                self.problems["oversized"] += 1
                continue
            out.append(record)
