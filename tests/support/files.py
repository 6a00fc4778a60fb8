"""What a gateway left on disk, read the same way by every test that checks it."""

from __future__ import annotations

from pathlib import Path


def file_lines(data_dir: Path) -> list[bytes]:
    out: list[bytes] = []
    for path in sorted((data_dir / "lines").glob("*.lp")):
        out.extend(line for line in path.read_bytes().split(b"\n") if line)
    return out
