"""Test support shared by the test modules (none of it is a test module): waiting for a
condition (:mod:`tests.support.wait`), an MQTT client for tests (:mod:`tests.support.mqtt`),
the real servers (:mod:`tests.support.servers`) and helpers several test files use."""
