"""Field types installers write by hand: durations, sizes, secrets.

They accept the human forms ("10s", "512MiB") as well as plain numbers, and advertise the
accepted forms in the JSON Schema so editors can complete and check them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    SecretStr,
    WithJsonSchema,
    model_validator,
)

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4, "tb": 1000**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: Any) -> float:
    """Seconds from ``10s``, ``250ms``, ``1m30s``, ``2h`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 10s, 250ms or 1m30s")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"expected a duration like 10s, 250ms or 1m30s, got {value!r}")
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ValueError("expected a duration like 10s, 250ms or 1m30s")
    if not math.isfinite(seconds):
        raise ValueError(f"duration must be a finite number of seconds, got {value!r}")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {value!r}")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from ``512MiB``, ``1GB``, ``64k`` or a bare number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 512MiB or 1GB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"size must be a finite number of bytes, got {value!r}")
        size = int(value)
    elif isinstance(value, str):
        match = _SIZE.match(value)
        unit = match.group(2).lower() if match else None
        if not match or unit not in _SIZE_UNITS:
            raise ValueError(f"expected a size like 512MiB or 1GB, got {value!r}")
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    else:
        raise ValueError("expected a size like 512MiB or 1GB")
    if size < 0:
        raise ValueError(f"size must not be negative, got {value!r}")
    return size


_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?(ms|s|m|h|d)\s*)+$"},
    ],
    "description": "seconds, or a duration such as 10s, 250ms, 1m30s",
}
_SIZE_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([kKmMgGtT]i?[bB]?|[bB])?\s*$"},
    ],
    "description": "bytes, or a size such as 512MiB, 1GB, 64k",
}

Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA)]
"""A duration in seconds (float)."""

ByteSize = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(_SIZE_SCHEMA)]
"""A size in bytes (int)."""


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, so typos never pass silently.

    ``.inf`` and ``.nan`` are refused in every number: a period of ``.inf`` once passed
    the checks and crashed a device task in a loop (``OverflowError``), and no setting
    means anything with NaN."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True,
                              allow_inf_nan=False)


SECRET_FILE_MAX = 64 * 1024
"""Longest secret or key file read: a token is under 1 KiB; ``/dev/zero`` is not a key."""


def read_bounded(path: Path, what: str) -> bytes:
    """The bytes of a small file named in the config, refused beyond SECRET_FILE_MAX."""
    try:
        with path.open("rb") as f:
            data = f.read(SECRET_FILE_MAX + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > SECRET_FILE_MAX:
        raise ValueError(f"{what} {path} is larger than {SECRET_FILE_MAX // 1024} KiB")
    return data


def read_secret_file(path: Path) -> str:
    """The secret in ``path``, without the trailing newline editors and ``echo`` add."""
    try:
        return read_bounded(path, "secret file").decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ValueError(f"secret file {path} is not UTF-8 text") from None


class SecretsModel(StrictModel):
    """A model with secrets that may be given inline (``token``) or as a file (``token_file``).

    Subclasses list their secret field names in ``secret_fields``; each needs a
    ``SecretStr | None`` field and a ``Path | None`` field named ``<name>_file``. Files keep
    secrets out of the YAML (systemd credentials, Docker secrets, mode-0600 files).
    """

    secret_fields: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _load_secret_files(self) -> SecretsModel:
        for name in self.secret_fields:
            inline = getattr(self, name)
            path = getattr(self, f"{name}_file")
            if inline is not None and path is not None:
                raise ValueError(f"set either {name} or {name}_file, not both")
            if path is not None:
                object.__setattr__(self, name, SecretStr(read_secret_file(path)))
        return self


def secret_value(secret: SecretStr | None) -> str | None:
    """The plain text of an optional secret, for handing to a client library."""
    return None if secret is None else secret.get_secret_value()
