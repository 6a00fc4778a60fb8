"""Turning one record into (tags, fields): a regex for text, offsets for binary.

Errors are :class:`RecordError` with a counter kind. Messages never contain the record
or a value: records carry card numbers, and the devices that pseudonymise them must not
leak them through the log.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from drivers.serial_line.config import BinaryField, SerialLineConfig
from gateway.reading import FieldValue

Parsed = tuple[dict[str, str], dict[str, FieldValue]]


class RecordError(ValueError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on", "y"):
        return True
    if lowered in ("0", "false", "no", "off", "n"):
        return False
    raise ValueError("not a boolean")


TEXT_TYPES: dict[str, Callable[[str], FieldValue]] = {"str": str, "int": int, "float": float,
                                                  "bool": _bool}


def _bcd(raw: bytes) -> int:
    text = raw.hex()
    if not text.isdigit():
        raise ValueError("not BCD")
    return int(text)


BINARY_TYPES: dict[str, Callable[[bytes], FieldValue]] = {
    "uint_be": lambda b: int.from_bytes(b, "big"),
    "uint_le": lambda b: int.from_bytes(b, "little"),
    "int_be": lambda b: int.from_bytes(b, "big", signed=True),
    "int_le": lambda b: int.from_bytes(b, "little", signed=True),
    "bcd": _bcd,
    "hex": lambda b: b.hex().upper(),
    "ascii": lambda b: b.decode("ascii").strip(),
}


class TextParser:
    def __init__(self, cfg: SerialLineConfig) -> None:
        assert cfg.pattern is not None
        self.regex = re.compile(cfg.pattern)
        self.encoding = cfg.encoding
        self.tag_groups = set(cfg.tag_groups)
        self.types = cfg.types

    def __call__(self, record: bytes) -> Parsed:
        try:
            text = record.decode(self.encoding).strip("\r\n\x00")
        except UnicodeDecodeError:
            raise RecordError("decode_error", f"record of {len(record)} bytes is not "
                              f"valid {self.encoding}") from None
        match = self.regex.search(text)
        if match is None:
            raise RecordError("no_match", f"record of {len(text)} characters does not "
                              "match the pattern")
        tags: dict[str, str] = {}
        fields: dict[str, FieldValue] = {}
        for name, value in match.groupdict().items():
            if value is None:
                continue
            if name in self.tag_groups:
                tags[name] = value
                continue
            kind = self.types.get(name, "str")
            try:
                fields[name] = TEXT_TYPES[kind](value)
            except ValueError:
                raise RecordError("bad_value", f"group {name!r} ({len(value)} characters) "
                                  f"is not a {kind}") from None
        return tags, fields


class BinaryParser:
    def __init__(self, cfg: SerialLineConfig) -> None:
        assert cfg.binary is not None
        self.pattern = cfg.binary.matcher()
        self.fields: list[BinaryField] = cfg.binary.fields

    def __call__(self, record: bytes) -> Parsed:
        if self.pattern is not None and (
                len(record) != len(self.pattern)
                or any(p is not None and p != b for p, b in zip(self.pattern, record,
                                                                strict=True))):
            raise RecordError("no_match", f"record of {len(record)} bytes does not match "
                              "the hex pattern")
        tags: dict[str, str] = {}
        fields: dict[str, FieldValue] = {}
        for spec in self.fields:
            raw = record[spec.offset:spec.offset + spec.length]
            if len(raw) < spec.length:
                raise RecordError("short_record", f"record of {len(record)} bytes has no "
                                  f"{spec.name} at offset {spec.offset}")
            try:
                value = BINARY_TYPES[spec.type](raw)
            except ValueError:
                raise RecordError("bad_value", f"{spec.name} is not {spec.type}") from None
            if spec.tag:
                tags[spec.name] = str(value)
            else:
                fields[spec.name] = value
        return tags, fields


def parser_for(cfg: SerialLineConfig) -> Callable[[bytes], Parsed]:
    return TextParser(cfg) if cfg.pattern is not None else BinaryParser(cfg)
