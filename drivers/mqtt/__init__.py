"""mqtt: cameras, sensors and terminals that publish to a broker (docs/mqtt.md)."""

from drivers.mqtt.config import MqttDeviceConfig
from drivers.mqtt.driver import MqttDriver
from gateway.registry import register_cross_check, register_driver

register_driver(MqttDeviceConfig, MqttDriver)


def _needs_mqtt_section(config: object) -> list[tuple[tuple[object, ...], str]]:
    if getattr(config, "mqtt", None) is not None:
        return []
    return [(("devices", i), "the mqtt driver needs the mqtt: section (broker settings)")
            for i, d in enumerate(getattr(config, "devices", [])) if d.driver == "mqtt"]


register_cross_check(_needs_mqtt_section)
