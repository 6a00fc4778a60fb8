"""Config files that once crashed ``iotgw check`` and a running gateway's SIGHUP reload.

Each entry: the text after a valid ``gateway:`` line, the line its error must name, and a
piece of the message. Shared by the check, SIGHUP and fuzz tests.
"""

from __future__ import annotations

HEADER = "gateway: {id: gw-t, site: test-site, data_dir: data}\n"


def _alias_bomb(levels: int = 10, fan_out: int = 9) -> str:
    """``a1: [*a0 x9]``, ``a2: [*a1 x9]``...: 9**10 values from 1 KiB of text."""
    lines = ["x-a0: &a0 [" + ", ".join(["lol"] * fan_out) + "]"]
    for level in range(1, levels):
        lines.append(f"x-a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * fan_out) + "]")
    return "\n".join(lines) + "\n"


HOSTILE: dict[str, tuple[str, int, str]] = {
    "deep nesting": ("x: " + "[" * 5000 + "]" * 5000 + "\n", 2, "nested deeper than 32 levels"),
    "deep block nesting": ("".join(" " * i + f"k{i}:\n" for i in range(60)) + " " * 60 + "v\n",
                           34, "nested deeper than 32 levels"),
    "python object tag": ('x: !!python/object/apply:os.system ["echo pwned"]\n', 2,
                          "unsupported tag !!python/object/apply:os.system"),
    "python name tag": ("x: !!python/name:os.system\n", 2, "unsupported tag !!python/name"),
    "local tag on a section": ("buffer: !include other.yaml\n", 2, "unsupported tag !include"),
    "binary tag": ("x: !!binary aGVsbG8=\n", 2, "unsupported tag !!binary"),
    "alias bomb": (_alias_bomb(), 8, "expands to more than 1,000,000 values"),
    "recursive alias": ("x: &loop [1, *loop]\n", 2,
                        "an alias refers to a mapping or list that contains it"),
    "merge of a scalar": ("buffer: {<<: 5}\n", 2, "a merge (<<) takes a mapping"),
    "mapping as a key": ("? {a: 1}\n: b\n", 2, "a key must be a plain value"),
    "bad explicit int": ("buffer: {max_pending: !!int twelve}\n", 2,
                         "cannot read 'twelve' as !!int"),
    "long modbus profile name": (
        "buses: {b: {type: tcp, host: h}}\n"
        f"devices: [{{id: d, driver: modbus, bus: b, unit: 1, profile: {'a' * 300}}}]\n", 3,
        "devices[0].profile: must be at most 64 characters"),
    "long mqtt profile name": (
        f"devices: [{{id: d, driver: mqtt, profile: {'a' * 300}}}]\n", 2,
        "devices[0]: unknown mqtt profile"),
    "huge integer": (f"buffer: {{max_pending: {'9' * 5000}}}\n", 2, "cannot read"),
}
