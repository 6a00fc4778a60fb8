"""A simulated MQTT device for this driver's tests and the demo: a Vzicloud licence-plate
camera publishing ``ivs_result`` messages (the ``vzicloud-plate`` profile's input) to a
broker over the project's own MQTT connection.

The driver never imports it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["PLATES", "PlateCamera", "plate_message"]

PLATES = ["京A12345", "赣GZ7S13", "粤B8K2L9", "沪C5D77E", "苏E0M123"]


def plate_message(serial: str, plate: str, camera: str) -> dict[str, Any]:
    now = int(time.time())
    return {"id": random.randint(1, 1 << 30), "sn": serial, "name": "ivs_result",
            "version": "1.0", "timestamp": now,
            "payload": {"Type": "ivs_result", "AlarmInfoPlate": {
                "channel": 0, "deviceName": camera, "ipaddr": "10.0.0.9",
                "result": {"PlateResult": {
                    "license": base64.b64encode(plate.encode()).decode(),
                    "confidence": random.randint(80, 99), "colorType": 1, "type": 1,
                    "direction": random.choice((0, 1)), "triggerType": 8,
                    "timeStamp": {"Timeval": {"sec": now, "usec": 0}}}}}}}


@dataclass
class PlateCamera:
    host: str
    port: int
    topic: str
    serial: str = "e5f1a0c3"
    username: str | None = None
    password: str | None = None
    every: float = 6.0
    published: int = 0
    error: str | None = None

    async def run(self) -> None:
        """Publish a plate event every ``every`` seconds (+-50%) over the project's own
        MQTT connection (gateway/mqtt/client.py: reconnects by itself; QoS 1)."""
        from gateway.config.models import MqttSection
        from gateway.mqtt.client import MqttConnection

        settings = MqttSection(host=self.host, port=self.port, username=self.username,
                               password=self.password, base_topic="iotgw-demo/camera")
        connection = MqttConnection(settings, f"iotgw-demo-camera-{os.getpid()}",
                                    on_message=lambda batch: None)
        link = asyncio.create_task(connection.run(), name="demo:plate-camera-mqtt")
        try:
            while True:
                await asyncio.sleep(self.every * random.uniform(0.5, 1.5))
                if not connection.connected:
                    self.error = connection.stats.last_error or "not connected"
                    continue
                self.error = None
                message = plate_message(self.serial, random.choice(PLATES), "gate-north")
                if connection.publish(self.topic, json.dumps(message), qos=1, queue=False):
                    self.published += 1
        finally:
            link.cancel()
            await asyncio.gather(link, return_exceptions=True)
