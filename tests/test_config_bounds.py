"""Every number a config sets is bounded: zero, negative, ``.inf``, ``.nan`` and huge values
are refused by ``check`` with the line, instead of harming the running gateway.

Issue 10 found ``auth_retry: 0`` (680 requests/s to a 401 server), ``retry_max: 0``, and
``interval: .inf`` / ``1e300`` (a device task restarting on ``OverflowError``). The table
names each bounded field with a config that places it; the first test makes sure the
table covers every numeric field of every registered config model, so a new field
without bounds fails here.
"""

from __future__ import annotations

import typing
from pathlib import Path

import annotated_types
import pytest
from pydantic import BaseModel

from drivers.modbus.profiles import Profile
from drivers.synthetic.config import SyntheticConfig
from gateway.config.loader import load_config
from gateway.config.models import build_config_model
from gateway.errors import ConfigError

HEADER = "gateway: {id: gw-t, site: s, data_dir: data}\n"
MQTT = "mqtt: {host: 127.0.0.1, base_topic: t/gw}\n"
SERIAL_BUS = "buses: {b: {type: serial, port: /dev/null}}\n"
TCP_BUS = "buses: {b: {type: tcp, host: 127.0.0.1}}\n"
INFLUX1 = "{type: influxdb1, url: 'http://127.0.0.1:8086', database: d, %s}"
INFLUX = "{type: influxdb, url: 'http://127.0.0.1:8086', bucket: b, token: t, %s}"
MODBUS = "{id: d, driver: modbus, bus: b, unit: 1, points: [{name: p, address: 0}], %s}"

# "Model.field": (the config's last line with %s where "field: value" goes, YAML path,
#                 preamble lines, a value just below the floor)
BOUNDED: dict[str, tuple[str, str, str, str]] = {
    "GatewaySection.shutdown_timeout": (
        "gateway: {id: gw-t, site: s, data_dir: data, %s}", "gateway", "", "0"),
    "BufferSection.max_bytes": ("buffer: {%s}", "buffer", HEADER, "1000"),
    "BufferSection.flush_interval": ("buffer: {%s}", "buffer", HEADER, "0"),
    "BufferSection.min_free": ("buffer: {%s}", "buffer", HEADER, "-1"),
    "BufferSection.max_pending": ("buffer: {%s}", "buffer", HEADER, "999"),
    "HealthSection.max_loop_lag": ("health: {%s}", "health", HEADER, "0"),
    "HealthSection.commit_stall": ("health: {%s}", "health", HEADER, "0.5"),
    "HealthSection.report_interval": ("health: {%s}", "health", HEADER, "0.01"),
    "MqttSection.port": ("mqtt: {host: h, base_topic: t/gw, %s}", "mqtt", HEADER, "0"),
    "MqttSection.keepalive": ("mqtt: {host: h, base_topic: t/gw, %s}", "mqtt", HEADER, "0"),
    "MqttSection.stats_interval": ("mqtt: {host: h, base_topic: t/gw, %s}", "mqtt", HEADER,
                                   "0"),
    "PrivacySection.length": ("privacy: {key_file: KEY, %s}", "privacy", HEADER, "7"),
    **{f"HttpSection.{field}": ("http: {listen: '127.0.0.1:0', %s}", "http", HEADER, below)
       for field, below in (("max_body", "1023"), ("max_buffered", "1000"), ("read_timeout", "0"),
                            ("header_timeout", "0"), ("commit_timeout", "0"),
                            ("max_connections", "0"), ("max_connections_per_source", "0"),
                            ("dedup_size", "15"))},
    "ImagesSection.max_bytes": ("http: {listen: '127.0.0.1:0', images: {dir: /tmp/x, %s}}",
                                "http.images", HEADER, "1000"),
    "CameraPushConfig.offline_after": (
        "devices: [{id: d, driver: camera_push, profile: vzenith-plate, token: t, %s}]",
        "devices[0]", HEADER + "http: {listen: '127.0.0.1:0'}\n", "0"),
    "SerialBus.baudrate": ("buses: {b: {type: serial, port: /dev/null, %s}}", "buses.b", HEADER,
                           "49"),
    "SerialBus.timeout": ("buses: {b: {type: serial, port: /dev/null, %s}}", "buses.b", HEADER,
                          "0"),
    "SerialBus.inter_frame_delay": ("buses: {b: {type: serial, port: /dev/null, %s}}",
                                    "buses.b", HEADER, "-1"),
    "TcpBus.port": ("buses: {b: {type: tcp, host: h, %s}}", "buses.b", HEADER, "0"),
    "TcpBus.timeout": ("buses: {b: {type: tcp, host: h, %s}}", "buses.b", HEADER, "0"),
    **{f"{model}.{field}": (f"sinks: [{template}]", "sinks[0]", HEADER, below)
       for model, template in (("FileSinkConfig", "{type: file, %s}"),
                               ("InfluxDB1SinkConfig", INFLUX1), ("InfluxDBSinkConfig", INFLUX))
       for field, below in (("batch_lines", "0"), ("timeout", "0"), ("retry_max", "0"),
                            ("auth_retry", "0"))},
    "FileSinkConfig.max_file_size": ("sinks: [{type: file, %s}]", "sinks[0]", HEADER, "0"),
    "FileSinkConfig.max_files": ("sinks: [{type: file, %s}]", "sinks[0]", HEADER, "-1"),
    **{f"SyntheticConfig.{field}": ("devices: [{id: d, driver: synthetic, %s}]", "devices[0]",
                                    HEADER, below)
       for field, below in (("interval", "0"), ("fields", "0"), ("wake_interval", "0"))},
    **{f"ModbusConfig.{field}": (f"devices: [{MODBUS}]", "devices[0]", HEADER + TCP_BUS, below)
       for field, below in (("unit", "-1"), ("interval", "0"), ("timeout", "0"),
                            ("retries", "-1"), ("backoff_max", "0"), ("max_registers", "0"),
                            ("max_bits", "0"), ("max_gap", "-1"), ("turnaround", "-1"))},
    **{f"Point.{field}": (
        "devices: [{id: d, driver: modbus, bus: b, unit: 1, points: [{name: p, address: 0, "
        f"{extra}%s}}]}}]", "devices[0].points[0]", HEADER + TCP_BUS, below)
       for field, extra, below in (("bit", "type: bit, ", "-1"), ("length", "type: string, ", "0"),
                                   ("precision", "", "-1"), ("deadband", "", "-1"))},
    **{f"PointOverride.{field}": (
        "devices: [{id: d, driver: modbus, bus: b, unit: 1, profile: eastron-sdm630, "
        "overrides: {voltage_l1: {%s}}}]", "devices[0].overrides.voltage_l1",
        HEADER + TCP_BUS, below)
       for field, below in (("precision", "-1"), ("deadband", "-1"))},
    **{f"{model}.{field}": (
        "devices: [{id: d, driver: " + driver + ", bus: b, address: '1', %s}]", "devices[0]",
        HEADER + SERIAL_BUS, below)
       for model, driver in (("Dlt645Config", "dlt645"), ("Cjt188Config", "cjt188"))
       for field, below in (("interval", "0"), ("timeout", "0"), ("backoff_max", "0"),
                            ("offline_after", "0"))},
    **{f"MqttDeviceConfig.{field}": (
        "devices: [{id: d, driver: mqtt, topic: t/x, measurement: m, fields: {v: $.v}, %s}]",
        "devices[0]", HEADER + MQTT, below)
       for field, below in (("max_payload", "15"), ("rate_limit", "0"), ("offline_after", "0"))},
    **{f"OsdpConfig.{field}": (
        "devices: [{id: d, driver: osdp, port: /dev/null, secure: false, %s}]", "devices[0]",
        HEADER, below)
       for field, below in (("baudrate", "1199"), ("address", "-1"), ("reconnect", "0"))},
    **{f"SerialLineConfig.{field}": (
        "devices: [{id: d, driver: serial_line, port: /dev/null, %s}]", "devices[0]", HEADER,
        below)
       for field, below in (("baudrate", "49"), ("reconnect_max", "0"))},
    **{f"Framing.{field}": (
        "devices: [{id: d, driver: serial_line, port: /dev/null, framing: {%s}}]",
        "devices[0].framing", HEADER, below)
       for field, below in (("length", "0"), ("max_length", "0"), ("idle_reset", "0"))},
    **{f"BinaryField.{field}": (
        "devices: [{id: d, driver: serial_line, port: /dev/null, "
        "binary: {fields: [{name: f, offset: 0, length: 1, %s}]}}]",
        "devices[0].binary.fields[0]", HEADER, below)
       for field, below in (("offset", "-1"), ("length", "0"))},
    **{f"RuleConfig.{field}": ("rules: [{id: r, when: 'v > 1', %s}]", "rules[0]", HEADER,
                               below)
       for field, below in (("for_", "-1"), ("off_delay", "-1"), ("severity", "0"),
                            ("realarm", "0"))},
    "RuleConfig.deadband": ("rules: [{id: r, when: 'v > 1', %s}]", "rules[0]", HEADER, "-1"),
    **{f"CountSpec.{field}": ("rules: [{id: r, when: 'v > 1', count: {%s}}]",
                              "rules[0].count", HEADER, below)
       for field, below in (("n", "0"), ("within", "0"))},
    **{f"WindowSpec.{field}": ("rules: [{id: r, when: 'min > 1', window: {field: v, %s}}]",
                               "rules[0].window", HEADER, below)
       for field, below in (("over", "0.5"), ("buckets", "1"))},
    **{f"StaleSpec.{field}": ("rules: [{id: r, stale: {%s}}]", "rules[0].stale", HEADER,
                              below)
       for field, below in (("factor", "0.5"), ("seconds", "0.01"))},
    **{f"ChatterSpec.{field}": ("rules: [{id: r, when: 'v > 1', chatter: {%s}}]",
                                "rules[0].chatter", HEADER, below)
       for field, below in (("transitions", "1"), ("within", "0.5"))},
    "RuleAction.min_interval": (
        "rules: [{id: r, when: 'v > 1', actions: [{on: raise, point: p, value: 1, %s}]}]",
        "rules[0].actions[0]", HEADER, "-1"),
    **{f"AlarmsSection.{field}": ("alarms: {%s}", "alarms", HEADER, below)
       for field, below in (("checkpoint_interval", "0.1"), ("max_alarms", "9"),
                            ("flood_count", "0"), ("flood_window", "0.5"),
                            ("journal_keep", "59m"))},
    **{f"EventStreamConfig.{field}": (
        "devices: [{id: d, driver: event_stream, profile: dahua, host: h, username: u, %s}]",
        "devices[0]", HEADER, below)
       for field, below in (("port", "0"), ("heartbeat", "0"), ("silence", "0.5"),
                            ("clear_after", "1"), ("connect_timeout", "0"),
                            ("reconnect_max", "0.5"), ("auth_retry", "0.5"),
                            ("max_part", "1000"), ("backfill_max", "59"),
                            ("backfill_page", "0"), ("backfill_major", "-1"),
                            ("backfill_minor", "-1"))},
    **{f"CameraHealthConfig.{field}": (
        "devices: [{id: d, driver: camera_health, host: h, %s}]", "devices[0]", HEADER, below)
       for field, below in (("rtsp_port", "0"), ("onvif_port", "0"), ("interval", "0.5"),
                            ("timeout", "0"), ("max_skew", "0.5"))},
}

FINITE_ONLY = {
    "PointOverride.scale", "PointOverride.offset", "Point.scale", "Point.offset",
    "ValueSpec.scale",
}
"""Value transforms: any finite number is a legitimate setting (refused: .inf, .nan)."""

OWN_PARSER = {"Point.address": "parse_address refuses anything outside 0..65535",
              "RuleAction.value": "a value written to a device point: the point's own "
                                  "encoding (allow_write, register type) bounds it",
              "EventStreamConfig.channels": "each item Annotated ge=1 le=4096 (a list)"}

PROFILE_ONLY = {"Profile.max_registers", "Profile.max_gap"}
"""Shipped Modbus profile files, not the config: checked on the model below."""


def _walk(annotation: typing.Any) -> typing.Iterator[typing.Any]:
    yield annotation
    for arg in typing.get_args(annotation):
        yield from _walk(arg)


def _models(cls: type[BaseModel], seen: dict[str, type[BaseModel]]) -> None:
    if cls.__name__ in seen:
        return
    seen[cls.__name__] = cls
    for info in cls.model_fields.values():
        for part in _walk(info.annotation):
            if isinstance(part, type) and issubclass(part, BaseModel):
                _models(part, seen)


def numeric_fields() -> dict[str, typing.Any]:
    models: dict[str, type[BaseModel]] = {}
    _models(build_config_model(), models)
    _models(Profile, models)
    return {f"{name}.{field}": info for name, cls in models.items()
            for field, info in cls.model_fields.items()
            if any(part in (int, float) for part in _walk(info.annotation))}


def test_every_numeric_config_field_is_bounded_and_in_the_table() -> None:
    fields = numeric_fields()
    known = set(BOUNDED) | FINITE_ONLY | set(OWN_PARSER) | PROFILE_ONLY
    assert set(fields) - known == set(), "numeric config fields missing from the table"
    assert known - set(fields) == set(), "the table names fields that do not exist"
    for name in (*BOUNDED, *PROFILE_ONLY):
        kinds = {type(m) for m in fields[name].metadata}
        assert kinds & {annotated_types.Gt, annotated_types.Ge}, f"{name}: no lower bound"
        assert kinds & {annotated_types.Lt, annotated_types.Le}, f"{name}: no upper bound"


CASES = [(name, value) for name in sorted(BOUNDED)
         for value in (BOUNDED[name][3], ".inf", ".nan", "-.inf", "1e300")]


@pytest.mark.parametrize(("name", "value"), CASES, ids=[f"{n}={v}" for n, v in CASES])
def test_out_of_range_value_is_refused_with_its_line(tmp_path: Path, name: str,
                                                     value: str) -> None:
    last, where, preamble, _below = BOUNDED[name]
    field = name.split(".", 1)[1]
    key = tmp_path / "key"
    key.write_text("k" * 32)
    text = preamble + (last % f"{field}: {value}").replace("KEY", str(key)) + "\n"
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    line = text.count("\n")
    expected = f"{path}:{line}: {where}.{field}: "
    hits = [p for p in caught.value.problems if p.startswith(expected)]
    assert hits, f"{name}: {value} not refused at {expected}\n" + "\n".join(
        caught.value.problems)
    assert not any("Traceback" in p for p in caught.value.problems)


@pytest.mark.parametrize("field", sorted(f.split(".")[1] for f in PROFILE_ONLY))
@pytest.mark.parametrize("value", [-1, 10**9, float("inf"), float("nan")])
def test_profile_limits_are_bounded(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        Profile.model_validate({"name": "p", "points": [{"name": "a", "address": 0}],
                                field: value})


@pytest.mark.parametrize("name", sorted(FINITE_ONLY))
@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_value_transforms_must_be_finite(tmp_path: Path, name: str, value: str) -> None:
    model, field = name.split(".")
    devices = {
        "Point": "devices: [{id: d, driver: modbus, bus: b, unit: 1, points: "
                 "[{name: p, address: 0, %s}]}]",
        "PointOverride": "devices: [{id: d, driver: modbus, bus: b, unit: 1, profile: "
                         "eastron-sdm630, overrides: {voltage_l1: {%s}}}]",
        "ValueSpec": "devices: [{id: d, driver: mqtt, topic: t/x, measurement: m, "
                     "fields: {v: {path: $.v, %s}}}]",
    }[model]
    path = tmp_path / "gw.yaml"
    path.write_text(HEADER + MQTT + TCP_BUS + devices % f"{field}: {value}" + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert any(":4: devices[0]." in p and "finite" in p for p in caught.value.problems), \
        caught.value.problems


def test_accepted_values_still_load(tmp_path: Path) -> None:
    """The floors leave room for what tests and installers use (1 ms synthetic devices,
    a 100 ms backoff cap, a 500 ms health report)."""
    path = tmp_path / "gw.yaml"
    path.write_text(HEADER + "health: {report_interval: 500ms}\n"
                    "sinks: [{type: file, retry_max: 100ms, auth_retry: 1s, timeout: 1s}]\n"
                    "devices: [{id: d, driver: synthetic, interval: 1ms}, "
                    "{id: e, driver: synthetic, interval: 1d}]\n")
    config = load_config(path, environ={})
    assert [d.interval for d in config.devices
            if isinstance(d, SyntheticConfig)] == [0.001, 86400.0]
