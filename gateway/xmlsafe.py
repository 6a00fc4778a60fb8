"""XML from devices on the LAN, parsed without trusting it: the one module that imports
defusedxml.

Cameras and access terminals send XML (Hikvision ISAPI events, ONVIF SOAP answers). A
device that is compromised, or just broken, must not be able to expand entities into
gigabytes ("billion laughs"), fetch external entities or make the parser read local
files: defusedxml refuses all of those. Every failure, hostile or merely malformed, comes
out as one exception type, ``XmlRefused``, so a driver counts it as a bad part and goes on.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

Element = ET.Element


class XmlRefused(ValueError):
    """The text is not XML we accept: malformed, or using DTD/entity tricks."""


def parse(text: bytes | str) -> Element:
    """The root element of ``text``; ``XmlRefused`` for anything malformed or hostile."""
    try:
        return fromstring(text, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise XmlRefused(f"refused XML construct: {type(exc).__name__}") from None
    except (ET.ParseError, ValueError, TypeError) as exc:
        raise XmlRefused(f"malformed XML: {exc}") from None


def local(tag: str) -> str:
    """A tag without its namespace: ``{http://www.hikvision.com/ver20/XMLSchema}eventType``
    is ``eventType`` (firmware versions differ in the namespace, never in the name)."""
    return tag.rsplit("}", 1)[-1]


def children(element: Element) -> dict[str, Element]:
    """Direct children by local name (the first of each name)."""
    out: dict[str, Element] = {}
    for child in element:
        out.setdefault(local(child.tag), child)
    return out


def find(element: Element, *path: str) -> Element | None:
    """The descendant along ``path`` of local names, namespaces ignored."""
    node: Element | None = element
    for name in path:
        if node is None:
            return None
        node = children(node).get(name)
    return node


def text(element: Element, *path: str) -> str | None:
    """Stripped text at ``path``; None when absent or empty (``<activePostCount/>``)."""
    node = find(element, *path)
    if node is None or node.text is None:
        return None
    value = node.text.strip()
    return value or None
