"""Topic filters with named captures: ``cameras/+camera/events`` subscribes to
``cameras/+/events`` and tags each reading with ``camera=<that level>``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicPattern:
    filter: str
    levels: tuple[str, ...]
    captures: tuple[tuple[int, str], ...]
    rest: str | None
    """Tag name for a trailing '#name' (the remaining levels joined with '/')."""

    @classmethod
    def parse(cls, text: str) -> TopicPattern:
        if not text or text.startswith("$"):
            raise ValueError(f"topic {text!r}: empty or a broker-internal ($...) topic")
        parts = text.split("/")
        levels: list[str] = []
        captures: list[tuple[int, str]] = []
        rest = None
        for i, part in enumerate(parts):
            if part.startswith("#"):
                if i != len(parts) - 1:
                    raise ValueError(f"topic {text!r}: '#' must be the last level")
                levels.append("#")
                rest = part[1:] or None
            elif part.startswith("+"):
                levels.append("+")
                if part[1:]:
                    captures.append((i, part[1:]))
            elif "+" in part or "#" in part:
                raise ValueError(f"topic {text!r}: wildcards must fill a whole level")
            else:
                levels.append(part)
        return cls("/".join(levels), tuple(levels), tuple(captures), rest)

    def match(self, topic: str) -> dict[str, str] | None:
        """Captured tags when ``topic`` matches, else None."""
        parts = topic.split("/")
        levels = self.levels
        wild_rest = levels and levels[-1] == "#"
        fixed = len(levels) - 1 if wild_rest else len(levels)
        if len(parts) < fixed or (not wild_rest and len(parts) != fixed):
            return None
        for i in range(fixed):
            if levels[i] != "+" and levels[i] != parts[i]:
                return None
        tags = {name: parts[i] for i, name in self.captures}
        if self.rest is not None:
            tags[self.rest] = "/".join(parts[fixed:])
        return tags
