"""Hostile config documents for the fuzz tests, made from the shipped configs.

Plain functions of a ``random.Random``, so hypothesis (``st.randoms``) drives them in the
fuzz tests and a seeded ``Random`` picks a handful for the SIGHUP test. Four kinds:

* byte-level mutations of a real config (YAML punctuation, tags, anchors inserted, lines
  duplicated or cut, indentation shifted);
* a real config with one value replaced by a hostile one (wrong type, inf/nan, huge,
  negative, files like /dev/zero, URLs with credentials, env references, deep nests);
* the same with tags, anchors, aliases and merge keys on the replaced value;
* generated bombs: deep nesting and alias fan-out of random shape.
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any

from gateway.config.yamlsource import parse_yaml

ROOT = Path(__file__).resolve().parent.parent
SEED_FILES = [ROOT / "config" / "demo.yaml",
              *sorted((ROOT / "drivers").glob("*/sample.yaml"))]
SEEDS = [p.read_text() for p in SEED_FILES]

TOKENS = ["{", "}", "[", "]", ":", ": ", "- ", ",", "&a ", "*a", "<<: *a", "!!str ", "!!int ",
          "!!float ", "!!binary ", "!!python/object/apply:os.system ", "!!python/name:os.getcwd",
          "!include ", "!!set ", "!!omap ", "? ", "|", ">", "'", '"', "#", "%YAML 1.1\n",
          "---\n", "...\n", "\t", "\n", "  ", "${HOME}", "${NOPE}", "$$", "\\", "\x00", "\ufeff",
          "\ud800", "é", ".inf", ".nan", "-.inf", "1e300", "0x1F", "0o17", "~", "null", "yes",
          "2024-13-45", "9" * 5000]

HOSTILE_VALUES: list[Any] = [
    0, -1, -10**30, 10**30, 2**63, 1e300, -1e300, math.inf, -math.inf, math.nan, 0.0, 1e-300,
    True, False, None, "", " ", "0", "-1s", "1e300s", "10x", "999999999999d", ".inf", "nan",
    "99999999999999TiB", "/dev/zero", "/dev/urandom", "/nonexistent/file", "/", "/proc/self/mem",
    "http://user:pw@127.0.0.1:9/", "http://u:p@h/?token=t", "ftp://x", "://", "http://[::1",
    "${HOME}", "${UNSET_VARIABLE_FOR_FUZZ}", "$${X}", "../../../../etc/passwd",
    "mqtt-../../x", "a" * 10_000, "\u202e", "line\nbreak", "#", "{", [], {}, [[[[[]]]]],
    {"a": {"b": {"c": None}}}, [1, "two", 3.0, None], {"<<": 5}, {"": ""}, {1: 2}, {None: 1},
]

TAGS = ["!!str", "!!int", "!!float", "!!bool", "!!null", "!!map", "!!seq", "!!binary",
        "!!timestamp", "!!set", "!!omap", "!!pairs", "!!python/object/apply:os.system",
        "!!python/tuple", "!custom", "!", "!<tag:yaml.org,2002:str>", "!<tag:example.com,1:x>"]


class Tagged:
    """A value written with an explicit tag."""

    def __init__(self, tag: str, value: Any) -> None:
        self.tag, self.value = tag, value


class Alias:
    """``*name`` in the output (the anchor is defined under ``x-anchors`` first)."""

    def __init__(self, name: str) -> None:
        self.name = name


def emit(value: Any) -> str:
    """Flow-style YAML for ``value``: enough YAML syntax to reach every loader path."""
    if isinstance(value, Tagged):
        return f"{value.tag} {emit(value.value)}"
    if isinstance(value, Alias):
        return f"*{value.name}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{emit(k)}: {emit(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(emit(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def mutate_text(rng: random.Random) -> str:
    """A shipped config with a few random edits to its text."""
    text = rng.choice(SEEDS)
    for _ in range(rng.randint(1, 6)):
        pos = rng.randrange(len(text) + 1)
        action = rng.randrange(5)
        if action == 0:
            text = text[:pos] + rng.choice(TOKENS) + text[pos:]
        elif action == 1:
            text = text[:pos] + text[pos + rng.randint(1, 40):]
        elif action == 2:
            lines = text.splitlines(keepends=True)
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            text = "".join(lines)
        elif action == 3:
            lines = text.splitlines(keepends=True)
            i = rng.randrange(len(lines))
            lines[i] = " " * rng.randint(0, 6) + lines[i].lstrip(" ")
            text = "".join(lines)
        else:
            text = text[:pos] + rng.choice(TOKENS) * rng.randint(2, 60) + text[pos:]
    return text


def _paths(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            out += _paths(value, (*path, index))
    return out


def hostile_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind <= 2:
        return copy.deepcopy(rng.choice(HOSTILE_VALUES))  # later mutations edit it in place
    if kind == 3:
        return rng.choice([rng.randint(-10**6, 10**6), rng.uniform(-1e6, 1e6),
                           "".join(rng.choice("0123456789.smhdKMGiB ") for _ in range(6))])
    if kind == 4:
        return Tagged(rng.choice(TAGS), copy.deepcopy(rng.choice(HOSTILE_VALUES[:40])))
    if kind == 5:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == 6:
        return {rng.choice(["id", "driver", "type", "interval", "<<", "x", "url", "bus"]):
                hostile_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return Alias("a")


def mutate_structure(rng: random.Random) -> str:
    """A shipped config, parsed, with some values replaced; anchors defined up front."""
    doc, _ = parse_yaml(rng.choice(SEEDS), environ={})
    assert doc is not None and isinstance(doc.data, dict)
    data = doc.data
    for _ in range(rng.randint(1, 4)):
        path = rng.choice(_paths(data)[1:])
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        if rng.random() < 0.2 and isinstance(parent, dict):
            parent[f"{path[-1]}_typo"] = parent.pop(path[-1])
        else:
            parent[path[-1]] = hostile_value(rng)
    anchor = emit(hostile_value(rng, depth=3))
    body = ", ".join(f"{emit(k)}: {emit(v)}" for k, v in data.items())
    return "{x-anchors: {a: &a " + anchor + "}, " + body + "}\n"


def bomb(rng: random.Random) -> str:
    """Deep nesting or alias fan-out of a random shape, inside an otherwise valid file."""
    head = "gateway: {id: gw-f, site: s, data_dir: data}\n"
    if rng.random() < 0.5:
        depth = rng.randint(1, 120)
        opener, closer = rng.choice([("[", "]"), ("{a: ", "}"), ("- ", "")])
        if opener == "- ":
            nest = "".join("  " * i + "- \n" for i in range(depth)) + "  " * depth + "x\n"
            return head + "buffer:\n" + nest
        return head + "buffer: " + opener * depth + "1" + closer * depth + "\n"
    fan, levels = rng.randint(2, 12), rng.randint(2, 14)
    lines = [f"x-{0}: &l0 [" + ", ".join(["v"] * fan) + "]"]
    lines += [f"x-{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan) + "]" for i in range(1, levels)]
    if rng.random() < 0.5:
        merged = ", ".join([f"{{a: *l{levels - 1}}}"] * fan)
        lines.append(f"buffer: {{<<: [{merged}]}}")
    return head + "\n".join(lines) + "\n"


GENERATORS = (mutate_text, mutate_structure, bomb)


def hostile_document(rng: random.Random) -> str:
    return rng.choice(GENERATORS)(rng)
