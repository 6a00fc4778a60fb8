"""Where a command's result may go when the requester names an MQTT 5 response topic.

Honoured blindly, a response topic lets any client allowed to send commands make the
gateway publish into any topic the gateway may write (a device's command topic, another
gateway's ops topics). The broker ACL is one guard; this is the other: results go below
the gateway's own ``base_topic``, or under the filters the installer lists in
``mqtt.response_topics``, and never onto the gateway's own command topics (a result there
would be read back as a command). A refused topic is answered on ``cmd/<verb>/result``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

MAX_TOPIC_BYTES = 65535
"""MQTT's limit on a topic name or filter (a UTF-8 string with a 16-bit length)."""


def check_filter(text: str) -> str:
    """A topic filter as MQTT defines it, for the config: not empty, '+' and '#' fill a
    whole level, '#' only last, no NUL, not a broker-internal ``$`` topic. Returns it."""
    levels = text.split("/")
    problems = (
        (not text, "empty"),
        (text.startswith("$"), "a broker-internal ($...) topic"),
        ("\0" in text, "contains NUL"),
        (len(text.encode()) > MAX_TOPIC_BYTES, f"longer than {MAX_TOPIC_BYTES} bytes"),
        (any(("+" in lv or "#" in lv) and lv not in ("+", "#") for lv in levels),
         "wildcards must fill a whole level"),
        ("#" in levels[:-1], "'#' must be the last level"),
    )
    for failed, why in problems:
        if failed:
            raise ValueError(f"topic filter {text!r}: {why}")
    return text


OWN_STATE_TOPICS = ("status", "stats", "errors", "devices/#", "events/#", "alarms/#")
"""Below ``base_topic``, what the gateway publishes itself: a result there would pass for
its status, a device's state or an event (found by an outside probe)."""


class ReplyPolicy:
    """Which response topics this gateway answers on."""

    def __init__(self, base: str, allowed: Sequence[str]) -> None:
        # paho's matcher, through the one module that wraps paho; imported here, not at the
        # top, because config validation imports check_filter and must not load paho
        from gateway.mqtt.client import topic_matches as topic_matches_sub

        self.base = base
        self.filters = (f"{base}/#", *allowed)
        own_commands = f"{base}/cmd/+"
        own_state = tuple(f"{base}/{t}" for t in OWN_STATE_TOPICS)
        self._rules: tuple[tuple[Callable[[str], bool], str], ...] = (
            (lambda t: not t or "+" in t or "#" in t or "\0" in t,
             "is not a topic name (empty, wildcard or NUL)"),
            (lambda t: topic_matches_sub(own_commands, t),
             "is a command topic of this gateway"),
            (lambda t: any(topic_matches_sub(f, t) for f in own_state),
             "is a topic this gateway publishes its own state on"),
            (lambda t: not any(topic_matches_sub(f, t) for f in self.filters),
             f"is outside {base}/ and mqtt.response_topics"),
        )

    def refusal(self, topic: str) -> str | None:
        """Why ``topic`` may not carry a result (one fixed text per kind, so it can key a
        log-once), or None when it may."""
        for refused, why in self._rules:
            if refused(topic):
                return why
        return None
