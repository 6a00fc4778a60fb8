"""MQTT: one paho-mqtt wrapper (client), the ops bus service (ops) and the hub that lets
the mqtt device driver commit through the pipeline (hub)."""
