"""camera_health: layered probes of cameras (TCP, RTSP OPTIONS/DESCRIBE, ONVIF clock)
(README.md in this folder)."""

from drivers.camera_health.config import CameraHealthConfig
from drivers.camera_health.driver import CameraHealthDriver
from gateway.registry import register_driver

register_driver(CameraHealthConfig, CameraHealthDriver)
