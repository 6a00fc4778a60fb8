"""MQTT: one paho-mqtt wrapper (client), the ops bus service (ops), its commands and
the response-topic policy. The mqtt device driver reaches the core through the typed
plugin API (gateway.plugin), not through this package."""
