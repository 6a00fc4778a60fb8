"""Home Assistant MQTT discovery: devices and their numeric points appear in Home
Assistant (and Node-RED's HA nodes) with no configuration on that side. Off by default.

For every (device, measurement, numeric field) seen on ``devices/<id>/values`` the ops
bus publishes, retained, ``<prefix>/sensor/<gateway>/<device>_<measurement>_<field>/config``
with the values topic as state topic and a ``value_template`` that picks the field out of
the JSON (the values topic carries every measurement of a device, so a message of another
measurement keeps the sensor's current state). Availability follows the gateway's retained
``status`` (birth / last will). Configs are re-published after every reconnect.

Each alarm of the alarm engine becomes a ``binary_sensor`` (device_class ``problem``):
``<prefix>/binary_sensor/<gateway>/alarm_<rule>_<device>/config`` with the retained
``alarms/<rule>/<device>`` topic as state topic, ``ON`` while the alarm is active (a
``value_template`` over its ``state``) and the whole alarm JSON as attributes; an alarm
that no longer exists has its config cleared.

Settings: ``mqtt.homeassistant: {enabled: false, prefix: homeassistant}``. Until that field
exists in ``MqttSection`` (gateway/config/models.py) :func:`settings_for` reads it when
present and otherwise returns "disabled".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from gateway.alarms.model import ACTIVE_STATES, AlarmKey, AlarmSnapshot, name_digest
from gateway.reading import Reading

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_ID_LIKE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""What a configured rule or device id may be: anything else (a count key's value from a
reading: "东门", "gate east") loses characters in :func:`_safe`, so it gets a hash."""
ALARM_ON = ("{{ 'ON' if value_json.state in " + json.dumps(sorted(str(s) for s in ACTIVE_STATES))
            + " else 'OFF' }}")
"""An alarm is a problem while active (acknowledged or not); cleared-unacknowledged,
shelved, suppressed and out of service are OFF, their state is in the attributes."""


@dataclass(frozen=True)
class HomeAssistant:
    enabled: bool = False
    prefix: str = "homeassistant"


def settings_for(mqtt: Any) -> HomeAssistant:
    """``mqtt.homeassistant`` (a model or a mapping with enabled / prefix), else off."""
    value = getattr(mqtt, "homeassistant", None)
    if value is None:
        return HomeAssistant()
    if isinstance(value, dict):
        return HomeAssistant(bool(value.get("enabled", False)),
                             str(value.get("prefix", "homeassistant")))
    return HomeAssistant(bool(getattr(value, "enabled", False)),
                         str(getattr(value, "prefix", "homeassistant")))


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("_") or "x"


def _named(name: str) -> str:
    """``name`` as an id part; names that are not ids get a short hash of the exact name,
    so "东门" and "西门" do not both become "" (one entity for two alarms)."""
    if _ID_LIKE.fullmatch(name):
        return _safe(name)
    return f"{_safe(name)}_{name_digest(name, 10)}".lstrip("_")


def _alarm_object_id(key: AlarmKey) -> str:
    return _safe(f"alarm_{key.rule}_{_named(key.device)}")


class Discovery:
    def __init__(self, settings: HomeAssistant, *, base: str, gateway_id: str,
                 drivers: dict[str, str]) -> None:
        self.settings = settings
        self.base = base
        self.gateway_id = gateway_id
        self.drivers = drivers
        self.configs: dict[str, bytes] = {}
        """topic -> retained config, everything announced so far (re-sent on reconnect)."""
        self._seen: set[tuple[str, str, str]] = set()

    def observe(self, device_id: str, reading: Reading) -> list[tuple[str, bytes]]:
        """Configs for the numeric fields of ``reading`` not announced yet."""
        new: list[tuple[str, bytes]] = []
        for name, value in reading.fields.items():
            if type(value) not in (int, float):
                continue
            key = (device_id, reading.measurement, name)
            if key in self._seen:
                continue
            self._seen.add(key)
            topic, payload = self._config(device_id, reading.measurement, name)
            self.configs[topic] = payload
            new.append((topic, payload))
        return new

    def _config(self, device_id: str, measurement: str, name: str) -> tuple[str, bytes]:
        node = _safe(self.gateway_id)
        object_id = _safe(f"{device_id}_{measurement}_{name}")
        unique = f"iotgw_{node}_{object_id}"
        template = ("{% if value_json.measurement == " + json.dumps(measurement)
                    + " and value_json.fields." + name + " is defined %}{{ value_json.fields."
                    + name + " }}{% else %}{{ this.state }}{% endif %}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            template = template.replace(f"value_json.fields.{name}",
                                        f"value_json.fields[{json.dumps(name)}]")
        body = {
            "name": f"{measurement} {name}",
            "unique_id": unique,
            "object_id": unique,
            "state_topic": f"{self.base}/devices/{device_id}/values",
            "value_template": template,
            "state_class": "measurement",
            "availability_topic": f"{self.base}/status",
            "availability_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": {
                "identifiers": [f"iotgw_{node}_{_safe(device_id)}"],
                "name": device_id,
                "manufacturer": "iotgw",
                "model": self.drivers.get(device_id, "device"),
                "via_device": f"iotgw_{node}",
            },
            "origin": {"name": "iotgw"},
        }
        topic = f"{self.settings.prefix}/sensor/{node}/{object_id}/config"
        return topic, json.dumps(body, separators=(",", ":")).encode()

    # -- alarms -------------------------------------------------------------------------

    def _alarm_topic(self, key: AlarmKey) -> str:
        object_id = _alarm_object_id(key)
        return f"{self.settings.prefix}/binary_sensor/{_safe(self.gateway_id)}/{object_id}/config"

    @property
    def alarm_config_filter(self) -> str:
        """Every alarm config of this gateway (to find leftovers after a connect)."""
        return f"{self.settings.prefix}/binary_sensor/{_safe(self.gateway_id)}/+/config"

    def is_alarm_config(self, topic: str) -> bool:
        prefix = f"{self.settings.prefix}/binary_sensor/{_safe(self.gateway_id)}/alarm_"
        return topic.startswith(prefix) and topic.endswith("/config")

    def alarm_config(self, alarm: AlarmSnapshot, state_topic: str) -> tuple[str, bytes]:
        """The retained ``binary_sensor`` config of one alarm (re-sent after a connect)."""
        node = _safe(self.gateway_id)
        key = alarm.key
        unique = f"iotgw_{node}_{_alarm_object_id(key)}"
        body = {
            "name": f"alarm {key.rule}",
            "unique_id": unique,
            "object_id": unique,
            "device_class": "problem",
            "state_topic": state_topic,
            "value_template": ALARM_ON,
            "json_attributes_topic": state_topic,
            "availability_topic": f"{self.base}/status",
            "availability_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": {
                "identifiers": [f"iotgw_{node}_{_named(key.device)}"],
                "name": key.device,
                "manufacturer": "iotgw",
                "model": self.drivers.get(key.device, "device"),
                "via_device": f"iotgw_{node}",
            },
            "origin": {"name": "iotgw"},
        }
        topic = self._alarm_topic(key)
        return topic, json.dumps(body, separators=(",", ":")).encode()

    def alarm_forget(self, key: AlarmKey) -> str:
        """The config topic to clear (empty retained) when an alarm no longer exists."""
        return self._alarm_topic(key)
