"""The alarm engine on a simulated clock: each rule feature and each ISA-18.2 transition."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest

from gateway.alarms.config import RuleConfig
from gateway.alarms.engine import DeviceInfo, Engine
from gateway.alarms.model import (
    KEY_VALUE_MAX,
    NAME_MAX,
    AlarmAction,
    AlarmCommand,
    AlarmCommandRefused,
    AlarmState,
    Transition,
    bounded_name,
)
from gateway.alarms.rules import compile_rule, load_lists
from gateway.pseudonym import Pseudonymizer
from gateway.reading import FieldValue, Reading


class Sim:
    """An engine, a simulated clock, and every transition it produced."""

    def __init__(self, *rules: dict[str, Any], devices: dict[str, DeviceInfo] | None = None,
                 start: float = 1_000_000.0) -> None:
        self.rules = [compile_rule(RuleConfig.model_validate(r)) for r in rules]
        self.engine = Engine(self.rules, devices=devices or {})
        self.now = start
        self.log: list[Transition] = []
        self.engine.start(start)

    def at(self, t: float) -> Sim:
        """Move the clock to start + t, firing timers on the way."""
        self.now = 1_000_000.0 + t
        self.engine.advance(self.now)
        self._collect()
        return self

    def feed(self, t: float, device: str = "meter-1", measurement: str = "m",
             tags: dict[str, str] | None = None, **fields: FieldValue) -> Sim:
        self.at(t)
        reading = Reading(measurement, tags or {}, fields, int(self.now * 1e9))
        self.engine.process(device, [reading], self.now)
        self._collect()
        return self

    def cmd(self, action: str, rule: str, device: str = "meter-1",
            duration: float | None = None) -> AlarmState:
        alarm = self.engine.command(
            AlarmCommand(AlarmAction(action), rule, device, "op", duration), self.now)
        self._collect()
        return alarm.state

    def _collect(self) -> None:
        self.log.extend(self.engine.take()[0])

    def causes(self) -> list[str]:
        return [t.cause for t in self.log]

    def state(self, rule: str, device: str = "meter-1") -> AlarmState:
        return self.engine.alarms[(rule, device)].state


OVERVOLTAGE = {"id": "overvoltage", "devices": ["meter-*"], "when": "voltage_l1 > 220",
               "for": "2s", "clear": "voltage_l1 < 215", "severity": 2,
               "message": "L1 voltage {voltage_l1} V"}


def test_on_delay_raises_only_after_the_condition_held_for_its_duration() -> None:
    sim = Sim(OVERVOLTAGE)
    sim.feed(0, voltage_l1=221.0).feed(1, voltage_l1=219.0)  # interrupted: no raise
    sim.feed(2, voltage_l1=222.0).at(3.9)
    assert sim.causes() == []
    sim.at(4.0)  # 2 s after the condition began to hold, without a new reading
    assert sim.causes() == ["raise"]
    raised = sim.log[0]
    assert raised.at == pytest.approx(1_000_004.0)
    assert raised.alarm.state is AlarmState.ACTIVE_UNACKED
    assert raised.alarm.message == "L1 voltage 222.0 V"
    assert raised.alarm.severity == 2 and raised.alarm.seq == 1
    # Between clear and when: stays active (hysteresis by a separate clear condition)
    sim.feed(5, voltage_l1=217.0)
    assert sim.causes() == ["raise"]
    sim.feed(6, voltage_l1=214.0)
    assert sim.causes() == ["raise", "clear"]
    assert sim.state("overvoltage") is AlarmState.CLEARED_UNACKED
    assert sim.log[-1].alarm.value == 214.0


def test_rule_selects_devices_by_glob_measurement_and_tags() -> None:
    sim = Sim({"id": "r", "devices": ["meter-*"], "measurement": ["power"],
               "tags": {"building": "b*"}, "when": "v > 1"})
    sim.feed(0, device="pump-1", measurement="power", tags={"building": "b1"}, v=5)
    sim.feed(0, device="meter-1", measurement="water", tags={"building": "b1"}, v=5)
    sim.feed(0, device="meter-1", measurement="power", tags={"building": "a1"}, v=5)
    assert sim.causes() == []
    sim.feed(0, device="meter-1", measurement="power", tags={"building": "b1"}, v=5)
    assert sim.causes() == ["raise"]


def test_chatter_around_the_threshold_with_a_deadband_raises_once_and_clears_once() -> None:
    """The issue's test: ±0.5 around the threshold for one simulated hour, deadband 1."""
    sim = Sim({"id": "level", "when": "level > 100", "deadband": 1})
    for second in range(3600):
        sim.feed(second, level=100 + (0.5 if second % 2 else -0.5))
    sim.feed(3600, level=98.0)
    assert sim.causes() == ["raise", "clear"]
    assert [t.alarm.seq for t in sim.log] == [1, 2]


def test_without_deadband_the_same_signal_chatters_and_is_flagged() -> None:
    sim = Sim({"id": "level", "when": "level > 100", "chatter": {"transitions": 10,
                                                                 "within": "10m"}})
    for second in range(60):
        sim.feed(second, level=100 + (0.5 if second % 2 else -0.5))
    assert sim.causes().count("chatter") == 1
    assert sim.engine.alarms[("level", "meter-1")].chatter
    assert sim.engine.counters.chatter == 1
    sim.feed(61, level=0.0)
    sim.at(61 + 600)  # calm for a whole window: the flag goes
    assert sim.causes()[-1] == "chatter"
    assert not sim.engine.alarms[("level", "meter-1")].chatter


def test_off_delay_keeps_the_alarm_until_the_clear_has_held() -> None:
    sim = Sim({"id": "r", "when": "v > 10", "deadband": 2, "off_delay": "5s"})
    sim.feed(0, v=11).feed(1, v=7).feed(3, v=9.5)  # clear interrupted at 3 s
    sim.at(10)
    assert sim.causes() == ["raise"]
    sim.feed(11, v=1).at(15.9)
    assert sim.causes() == ["raise"]
    sim.at(16)
    assert sim.causes() == ["raise", "clear"]


def test_ack_shelve_unshelve_out_of_service_in_service() -> None:
    sim = Sim({"id": "r", "when": "v > 10"})
    sim.feed(0, v=11)
    assert sim.cmd("ack", "r") is AlarmState.ACTIVE_ACKED
    with pytest.raises(AlarmCommandRefused):
        sim.cmd("ack", "r")
    sim.feed(1, v=0)
    assert sim.state("r") is AlarmState.NORMAL  # cleared after ack: straight to normal
    sim.feed(2, v=11)
    assert sim.state("r") is AlarmState.ACTIVE_UNACKED
    assert sim.cmd("shelve", "r", duration=60) is AlarmState.SHELVED
    sim.feed(3, v=0).feed(4, v=12)  # hidden while shelved (timed: stays shelved)
    assert sim.state("r") is AlarmState.SHELVED
    sim.at(63)  # timed shelve runs out: the condition holds, so active and unacked
    assert sim.causes()[-1] == "unshelve"
    assert sim.state("r") is AlarmState.ACTIVE_UNACKED
    assert sim.cmd("out_of_service", "r") is AlarmState.OUT_OF_SERVICE
    with pytest.raises(AlarmCommandRefused):
        sim.cmd("shelve", "r")
    sim.feed(70, v=0)
    assert sim.cmd("in_service", "r") is AlarmState.NORMAL
    seqs = [t.alarm.seq for t in sim.log]
    assert seqs == list(range(1, len(seqs) + 1))
    assert all(t.client == "op" for t in sim.log if t.cause in ("ack", "shelve"))


def test_one_shot_shelve_ends_when_the_alarm_returns_to_normal() -> None:
    sim = Sim({"id": "r", "when": "v > 10"})
    sim.feed(0, v=11)
    sim.cmd("shelve", "r")
    sim.feed(1, v=0)
    assert sim.causes() == ["raise", "shelve", "unshelve"]
    assert sim.state("r") is AlarmState.NORMAL


def test_latched_alarm_stays_active_until_reset_after_the_condition_cleared() -> None:
    sim = Sim({"id": "tamper", "when": "tamper == true", "latched": True})
    sim.feed(0, tamper=True).feed(1, tamper=False)
    assert sim.state("tamper") is AlarmState.ACTIVE_UNACKED
    sim.feed(2, tamper=True)
    with pytest.raises(AlarmCommandRefused, match="still present"):
        sim.cmd("reset", "tamper")
    sim.feed(3, tamper=False)
    assert sim.cmd("reset", "tamper") is AlarmState.NORMAL
    assert sim.causes() == ["raise", "reset"]


def test_reset_is_refused_for_a_rule_that_is_not_latched() -> None:
    sim = Sim({"id": "r", "when": "v > 10"})
    sim.feed(0, v=11)
    with pytest.raises(AlarmCommandRefused, match="latched"):
        sim.cmd("reset", "r")


def test_realarm_repeats_while_active_and_unacknowledged() -> None:
    sim = Sim({"id": "r", "when": "v > 10", "realarm": "10m"})
    sim.feed(0, v=11).at(600).at(1200)
    assert sim.causes() == ["raise", "realarm", "realarm"]
    sim.cmd("ack", "r")
    sim.at(3000)
    assert sim.causes() == ["raise", "realarm", "realarm", "ack"]


def test_count_per_key_within_a_window() -> None:
    """Five denied cards at one reader within 2 minutes."""
    sim = Sim({"id": "denied", "when": 'result == "denied"',
               "count": {"n": 5, "within": "2m", "key": "reader"}})
    for i in range(4):
        sim.feed(i * 10, device="acs", tags={"reader": "r1"}, result="denied")
    sim.feed(45, device="acs", tags={"reader": "r2"}, result="denied")
    sim.feed(50, device="acs", tags={"reader": "r1"}, result="granted")
    assert sim.causes() == []
    sim.feed(60, device="acs", tags={"reader": "r1"}, result="denied")
    assert sim.causes() == ["raise"]
    assert sim.log[0].alarm.key.device == "r1"
    sim.at(60 + 120)  # the early ones age out: fewer than 5 in the window
    assert sim.causes() == ["raise", "clear"]


def test_window_minimum_detects_flow_that_never_stops() -> None:
    sim = Sim({"id": "leak", "window": {"field": "flow", "over": "3h"},
               "when": "full and min > 0"})
    for minute in range(0, 180):
        sim.feed(minute * 60, flow=0.2 + (minute % 3) * 0.1)
    assert sim.causes() == []
    sim.feed(180 * 60, flow=0.3)
    assert sim.causes() == ["raise"]
    sim.feed(181 * 60, flow=0.0)
    assert sim.causes() == ["raise", "clear"]


def test_window_aggregates() -> None:
    sim = Sim({"id": "rising", "window": {"field": "e", "over": "10m", "buckets": 10},
               "when": "delta > 5 and rate > 0.01 and max == 6 and avg > 2"})
    for i in range(7):
        sim.feed(i * 60, e=float(i))
    assert sim.causes() == ["raise"]


def test_stale_device_raises_after_three_intervals_and_clears_on_the_next_reading() -> None:
    sim = Sim({"id": "offline", "stale": "3x"},
              devices={"meter-1": DeviceInfo(interval=10.0), "meter-2": DeviceInfo(
                  interval=10.0)})
    sim.feed(5, v=1)
    sim.at(29.9)
    assert sim.causes() == []
    sim.at(30)  # meter-2 never sent anything: silent since start
    assert [t.alarm.key.device for t in sim.log] == ["meter-2"]
    sim.at(35)
    assert [t.alarm.key.device for t in sim.log] == ["meter-2", "meter-1"]
    sim.feed(40, v=1)
    assert sim.log[-1].cause == "clear" and sim.log[-1].alarm.key.device == "meter-1"


def test_stale_point_by_duration() -> None:
    sim = Sim({"id": "no-flow", "stale": {"after": "90s", "field": "flow"}})
    sim.feed(0, flow=1.0).feed(60, temp=3.0)  # readings without flow do not count
    sim.at(91)
    assert sim.causes() == ["raise"]


def test_device_state_is_an_input() -> None:
    sim = Sim({"id": "down", "when": 'device_state == "offline"', "for": "30s"})
    sim.engine.device_state("meter-1", "offline", sim.now)
    sim.at(30)
    assert sim.causes() == ["raise"]
    sim.engine.device_state("meter-1", "online", sim.now)
    sim._collect()
    assert sim.causes() == ["raise", "clear"]


def test_schedule_in_a_time_zone() -> None:
    # 1_000_000 s after the epoch is 1970-01-12 13:46:40 UTC = 21:46:40 in Shanghai.
    sim = Sim({"id": "night-flow", "when": "flow > 0", "active": "22:00-05:00",
               "timezone": "Asia/Shanghai"})
    sim.feed(0, flow=1.0)
    assert sim.causes() == []
    sim.feed(14 * 60, flow=1.0)  # 22:00:40
    assert sim.causes() == ["raise"]
    sim.at(7 * 3600 + 14 * 60)  # 05:00:40: the span ended, the alarm clears by itself
    assert sim.causes() == ["raise", "clear"]


def test_suppression_by_expression_hides_and_reveals() -> None:
    sim = Sim({"id": "r", "when": "v > 10", "suppress": "maintenance == true"})
    sim.feed(0, v=11, maintenance=True)
    assert sim.state("r") is AlarmState.SUPPRESSED
    sim.feed(1, v=12, maintenance=False)
    assert sim.state("r") is AlarmState.ACTIVE_UNACKED
    assert sim.causes() == ["suppress", "unsuppress"]


def test_list_matching_on_a_pseudonymised_field_keeps_only_hashes(tmp_path: Path) -> None:
    (tmp_path / "plates.txt").write_text("# blocked\nAB123\nCD456  # stolen\n")
    hide = Pseudonymizer(b"k" * 32)
    config = RuleConfig.model_validate({
        "id": "blocked", "when": "plate in blocked",
        "lists": {"blocked": {"file": "plates.txt", "field": "plate"}}})
    rule = compile_rule(config)
    rule.lists = load_lists(config, tmp_path, [frozenset({"plate"})], hide)
    assert rule.lists.raw == {}
    assert rule.lists.hashed["blocked"] == {hide("AB123"), hide("CD456")}
    engine = Engine([rule], devices={"gate": DeviceInfo(private=frozenset({"plate"}))})
    # The pipeline hands the engine readings already pseudonymised
    engine.process("gate", [Reading("plate", {}, {"plate": hide("XY999")}, 1)], 1.0)
    engine.process("gate", [Reading("plate", {}, {"plate": hide("CD456")}, 2)], 2.0)
    (raised,) = engine.take()[0]
    assert raised.alarm.value == hide("CD456")


def test_runtime_errors_are_counted_logged_once_and_do_not_stop_other_rules(
        caplog: pytest.LogCaptureFixture) -> None:
    sim = Sim({"id": "bad", "when": "v > 10 and w > 1"}, {"id": "good", "when": "v > 10"})
    with caplog.at_level(logging.WARNING, logger="iotgw.alarms"):
        for t in range(5):
            sim.feed(t, v=11 + t)  # no w
        sim.feed(6, v="text", w=2)
    assert sim.engine.counters.rule_errors["bad"] == 6
    assert [t.alarm.key.rule for t in sim.log] == ["good"]
    messages = [r.getMessage() for r in caplog.records if "rule bad" in r.getMessage()]
    assert len(messages) == 2  # one per kind: missing w, then a type error
    assert sim.engine.counters.rule_errors["good"] == 1


def test_readings_are_evaluated_only_against_rules_that_read_their_fields() -> None:
    rules = [{"id": f"r{i}", "devices": [f"d{i % 10}"], "when": f"f{i % 3} > 100"}
             for i in range(30)]
    sim = Sim(*rules)
    sim.feed(0, device="d1", f0=1.0)
    # d1 has rules r1, r11, r21 reading f1, f2, f0: only r21 reads f0
    assert sim.engine.counters.evaluations == 1


def test_commands_for_unknown_alarms_are_refused_but_out_of_service_may_come_first() -> None:
    sim = Sim({"id": "r", "devices": ["meter-*"], "when": "v > 10"},
              devices={"meter-1": DeviceInfo()})
    with pytest.raises(AlarmCommandRefused, match="unknown rule"):
        sim.cmd("ack", "nope")
    with pytest.raises(AlarmCommandRefused, match="no alarm"):
        sim.cmd("ack", "r")
    with pytest.raises(AlarmCommandRefused, match="does not select"):
        sim.cmd("out_of_service", "r", device="pump-1")
    with pytest.raises(AlarmCommandRefused, match="unknown device"):
        sim.cmd("out_of_service", "r", device="meter-/#")  # the glob matches; no device
    assert sim.cmd("out_of_service", "r") is AlarmState.OUT_OF_SERVICE
    sim.feed(1, v=11)
    assert sim.causes() == ["out_of_service"]
    assert sim.cmd("in_service", "r") is AlarmState.ACTIVE_UNACKED


def test_reload_keeps_unchanged_rules_resets_changed_and_removes_dropped() -> None:
    sim = Sim({"id": "keep", "when": "v > 10", "for": "10s"},
              {"id": "change", "when": "v > 10", "for": "10s"},
              {"id": "drop", "when": "v > 10"})
    sim.feed(0, v=11)
    assert sim.causes() == ["raise"]  # drop
    new = [compile_rule(RuleConfig.model_validate(r)) for r in (
        {"id": "keep", "when": "v > 10", "for": "10s"},
        {"id": "change", "when": "v > 10", "for": "20s"})]
    sim.at(5)
    sim.engine.replace_rules(new, {}, sim.now)
    sim._collect()
    assert sim.causes() == ["raise", "removed"]
    assert ("drop", "meter-1") not in sim.engine.alarms
    sim.at(10)  # keep: its pending on-delay (from 0 s) survived the reload
    assert [t.alarm.key.rule for t in sim.log][-1] == "keep"
    sim.at(100)  # change: its timer was reset, and no new reading came
    assert "change" not in [t.alarm.key.rule for t in sim.log]


def test_message_templates_show_missing_names_as_question_marks() -> None:
    sim = Sim({"id": "r", "when": "v > 10", "message": "v={v:.1f} other={other}"})
    sim.feed(0, v=11.25)
    assert sim.log[0].alarm.message == "v=11.2 other=?"


def test_expression_fast_path_agrees_with_rule_engine() -> None:
    from gateway.alarms.expr import compile_expression, reference_value

    cases = ["a > 1 and b < 2", "not (a >= 1) or b <= 2", 'c == "x"', "d == true",
             "a != 1", "c in s", "a == 1.0"]
    values: dict[str, Any] = {"a": 1, "b": 2.5, "c": "x", "d": True, "s": {"x", "y"}}
    for text in cases:
        expression = compile_expression(text)
        assert expression._fast is not None, text
        slow = reference_value(text, values)
        assert expression(values) == slow, text
    assert not math.isnan(compile_expression("a + 1 > 1")({"a": 1}) * 1.0)


def test_stale_alarms_exist_for_configured_devices_selected_by_installer_tags() -> None:
    sim = Sim({"id": "silent", "tags": {"building": "b7"}, "measurement": ["water"],
               "stale": "60s"},
              devices={"w-1": DeviceInfo(tags={"building": "b7"}),
                       "w-2": DeviceInfo(tags={"building": "b8"})})
    sim.at(60)
    assert [t.alarm.key.device for t in sim.log] == ["w-1"]
    assert sim.log[0].alarm.tags == {"building": "b7"}


def test_count_key_alarms_that_never_raised_do_not_fill_max_alarms() -> None:
    """Found by probing with a card-number count key (``key: card``: the same card denied
    5 times): every card ever seen became an alarm kept for ever though it never raised,
    so once alarms.max_alarms was reached every new alarm, a leak included, was ignored.
    At the limit, alarms that never raised and hold nothing (no count left in the window,
    no timer, no operator state) make room."""
    sim = Sim({"id": "d", "when": "not granted", "count": {"n": 3, "within": "2m", "key": "card"}},
              {"id": "leak", "devices": ["wm-*"], "when": "flow > 0"})
    sim.engine.settings = sim.engine.settings.model_copy(update={"max_alarms": 50})
    sim.feed(0, device="rd-1", measurement="access_event", granted=False, card="held")
    for i in range(200):  # cards seen once each, a few seconds apart
        sim.feed(1 + i * 5, device="rd-1", measurement="access_event", granted=False,
                 card=f"c{i}")
    assert len(sim.engine.alarms) <= 50
    sim.feed(2000, device="wm-1", measurement="water_meter", flow=0.4)
    assert sim.state("leak", "wm-1") is AlarmState.ACTIVE_UNACKED
    for t in (2001, 2002):  # a card denied 3 times within the window still raises
        sim.feed(t, device="rd-1", measurement="access_event", granted=False, card="bad")
    sim.feed(2003, device="rd-1", measurement="access_event", granted=False, card="bad")
    assert sim.state("d", "bad") is AlarmState.ACTIVE_UNACKED


def test_an_alarm_made_again_after_its_rule_came_back_continues_its_seq() -> None:
    """A removed rule's alarms go with a ``removed`` transition; made again once the rule
    is back (a reload), they start from the seq already journaled, not at 1 (the journal
    holds UNIQUE (alarm_id, seq)). One that did nothing since it was made again can still
    make room at alarms.max_alarms, and comes back with the same seq once more."""
    count = {"id": "d", "when": "not granted", "count": {"n": 2, "within": "1m", "key": "card"}}
    sim = Sim(count)
    for t in (0, 1):
        sim.feed(t, device="rd-1", measurement="access_event", granted=False, card="c")
    sim.engine.replace_rules([], {}, sim.now)
    sim._collect()
    assert [(t.cause, t.alarm.seq) for t in sim.log] == [("raise", 1), ("removed", 2)]
    sim.engine.replace_rules(sim.rules, {}, sim.now)
    sim.engine.settings = sim.engine.settings.model_copy(update={"max_alarms": 2})
    for i, t in enumerate((10, 100, 101)):  # c (made again, idle), then others fill up
        sim.feed(t, device="rd-1", measurement="access_event", granted=False, card=f"{i}"
                 if i else "c")
    assert ("d", "c") not in sim.engine.alarms  # evicted: nothing journaled since made
    for t in (200, 201):
        sim.feed(t, device="rd-1", measurement="access_event", granted=False, card="c")
    assert [(t.cause, t.alarm.seq) for t in sim.log][-1] == ("raise", 3)


def test_an_interrupted_clear_or_raise_leaves_the_alarm_value_alone() -> None:
    """Found by an outside probe (``t > 30``, deadband 2, off_delay 1 s): raised at 31.5,
    then 27/29 flapping, so every clear began and was interrupted; the alarm stayed active
    (right) but its value became 27.0, a clear that never happened, and the next
    transition (an ack) and the retained state showed it. ``value`` is the value that
    decided the last raise or clear: a pending off- (or on-) delay keeps its value aside
    until the delay runs out."""
    sim = Sim({"id": "hot", "when": "temp > 30", "deadband": 2, "off_delay": "1s",
               "for": "1s", "message": "t {temp}"})
    sim.feed(0, temp=31.0).feed(0.5, temp=31.5).at(1)
    assert sim.causes() == ["raise"] and sim.log[-1].alarm.value == 31.5
    for i in range(10):
        sim.feed(1.1 + i * 0.3, temp=27.0 if i % 2 == 0 else 29.0)
    assert sim.causes() == ["raise"]
    sim.cmd("ack", "hot")
    acked = sim.log[-1]
    assert acked.cause == "ack" and acked.alarm.value == 31.5, acked.alarm
    sim.feed(5, temp=25.0).at(6)
    assert sim.causes()[-1] == "clear" and sim.log[-1].alarm.value == 25.0
    # a raise that began and was interrupted leaves value and message alone too
    sim.feed(10, temp=40.0).feed(10.5, temp=20.0).at(20)
    assert sim.causes()[-1] == "clear"
    alarm = sim.engine.alarms[("hot", "meter-1")].snapshot()
    assert alarm.value == 25.0 and alarm.message == "t 31.5", alarm


def test_the_pending_value_survives_a_restart() -> None:
    """The off-delay is saved with the alarm (it survives a restart), and so is the value
    it will set when it runs out."""
    rule = {"id": "hot", "when": "temp > 30", "deadband": 2, "off_delay": "5s"}
    sim = Sim(rule)
    sim.feed(0, temp=31.0).feed(1, temp=27.0)
    alarm = sim.engine.alarms[("hot", "meter-1")]
    assert alarm.value == 31.0
    row = alarm.to_row()
    restarted = Sim(rule)
    restarted.engine.restore([("hot", "meter-1", alarm.seq, restarted.rules[0].digest, row,
                               alarm.since, alarm.value, alarm.message, alarm.severity)],
                              restarted.now)
    restarted.engine.start(restarted.now)
    restarted.at(10)
    assert restarted.causes() == ["clear"] and restarted.log[-1].alarm.value == 27.0


def test_a_long_count_key_names_its_alarm_by_a_bounded_stable_name() -> None:
    """Found by an outside probe: a count key's value of 70,000 characters named the
    alarm, so its retained topic level was refused by paho and its ``cmd/alarm ack`` was
    larger than the ops bus accepts. Names over NAME_MAX characters become a prefix,
    ``~`` and a hash: the same value names the same alarm, values with the same prefix
    name different ones, and the value itself is kept (bounded) in ``key_value``."""
    sim = Sim({"id": "bykey", "when": "v > 0", "count": {"n": 1, "within": "1m", "key": "k"}})
    first, second = "x" * 70_000, "x" * 69_999 + "y"
    sim.feed(0, device="kdev", k=first, v=1).feed(1, device="kdev", k=second, v=1)
    sim.feed(2, device="kdev", k=first, v=1).feed(3, device="kdev", k="short", v=1)
    names = [t.alarm.key.device for t in sim.log if t.cause == "raise"]
    assert len(names) == 3 and names[2] == "short"
    assert names[0] != names[1] and all(len(n) == NAME_MAX + 1 for n in names[:2])
    assert names[0] == bounded_name(first) and names[0].startswith("x" * 100)
    assert {len(a.alarm_id) for a in sim.engine.alarms.values()} == {16}
    raised = sim.log[0].alarm
    assert raised.key_value == first[:KEY_VALUE_MAX] and sim.log[-1].alarm.key_value is None
    assert bounded_name("y" * NAME_MAX) == "y" * NAME_MAX  # kept as it is up to the limit
    # acknowledged by its name, or by the value itself
    assert sim.cmd("ack", "bykey", names[0]) is AlarmState.ACTIVE_ACKED
    assert sim.cmd("ack", "bykey", second) is AlarmState.ACTIVE_ACKED


def test_a_shelve_for_a_non_finite_duration_is_refused() -> None:
    sim = Sim({"id": "r", "when": "v > 1"})
    sim.feed(0, v=5)
    for duration in (math.nan, math.inf, -1.0):
        with pytest.raises(AlarmCommandRefused, match="finite"):
            sim.cmd("shelve", "r", duration=duration)
    assert sim.state("r") is AlarmState.ACTIVE_UNACKED


def test_a_regex_sees_at_most_the_first_characters_of_a_value() -> None:
    """A pattern that is only polynomial passes the load-time check, but on a long value
    it still takes long: ``.*a.*b.*c$`` with ``=~~`` took 14.5 s on 1,024 characters (an
    MQTT string may be 256 KiB). A regex sees the first REGEX_INPUT_MAX characters."""
    from gateway.alarms.expr import REGEX_INPUT_MAX

    sim = Sim({"id": "tail", "when": 'code =~~ "x$"'}, {"id": "head", "when": 'code =~ "a+x"'})
    sim.feed(0, code="a" * REGEX_INPUT_MAX + "x")
    assert sim.causes() == []  # the x lies past what the regexes see
    sim.feed(1, code="a" * (REGEX_INPUT_MAX - 1) + "x")
    assert sorted(t.alarm.key.rule for t in sim.log) == ["head", "tail"]


def test_a_rendered_message_is_cut_to_message_max() -> None:
    """Widths are bounded at load; a value is not: a 300,000 character string in
    ``{code}`` would be published, journaled and buffered with every transition."""
    from gateway.alarms.engine import MESSAGE_MAX

    sim = Sim({"id": "r", "when": "v > 10", "message": "code {code} {v:>100}"})
    sim.feed(0, v=11, code="x" * 300_000)
    message = sim.log[0].alarm.message
    assert len(message) == MESSAGE_MAX and message.startswith("code xxx"), len(message)
    assert message.endswith("x…")
    sim.feed(1, v=1).feed(2, v=12, code="short")
    assert sim.log[-1].alarm.message == "code short " + " " * 98 + "12"


def stamps(sim: Sim) -> list[tuple[float, str, str]]:
    """(seconds since the simulation's start, rule, cause) of every transition."""
    return [(round(t.at - 1_000_000.0, 6), t.alarm.key.rule, t.cause) for t in sim.log]


def test_stale_and_count_timers_noticed_late_are_stamped_when_they_fell_due() -> None:
    """Found by the outside probe of session 7: ``iotgw rules test --replay`` stamped stale
    and count-expiry transitions at the next reading, and a gateway whose alarms task
    woke late stamped them then. Stale is stamped at the last reading + the silence, a
    count's clear when its oldest hit left the window."""
    sim = Sim({"id": "silent", "devices": ["meter-1"], "stale": "40s"},
              {"id": "cards", "when": 'card == "bad"', "count": {"n": 3, "within": "60s"}},
              devices={"meter-1": DeviceInfo()})
    sim.feed(0, card="bad").feed(1, card="bad").feed(2, card="bad")
    sim.at(500)  # noticed late, all at once
    assert stamps(sim) == [(2.0, "cards", "raise"), (42.0, "silent", "raise"),
                           (60.0, "cards", "clear")]


def test_realarm_chatter_and_schedule_timers_noticed_late_are_stamped_when_due() -> None:
    again = Sim({"id": "again", "when": "v > 10", "realarm": "10s"})
    again.feed(0, v=11.0).at(35)
    assert stamps(again) == [(0.0, "again", "raise"), (10.0, "again", "realarm"),
                             (20.0, "again", "realarm"), (30.0, "again", "realarm")]
    chatty = Sim({"id": "chatty", "when": "v > 10", "chatter": {"transitions": 2,
                                                                "within": "60s"}})
    chatty.feed(0, v=11.0).feed(1, v=1.0).feed(2, v=11.0).at(1000)
    assert stamps(chatty) == [(0.0, "chatty", "raise"), (1.0, "chatty", "clear"),
                              (2.0, "chatty", "chatter"), (2.0, "chatty", "raise"),
                              (62.0, "chatty", "chatter")]  # flagged, then calm
    # the simulated clock starts at 1970-01-12 13:46:40 UTC: the span ends 200 s later
    night = Sim({"id": "night", "when": "v > 10", "active": "13:00-13:50", "timezone": "UTC"})
    night.feed(0, v=11.0).at(1000)
    assert stamps(night) == [(0.0, "night", "raise"), (200.0, "night", "clear")]


def test_a_reading_after_a_due_timer_is_decided_after_it() -> None:
    """A ``for:`` due at 10 s and, before the alarms task woke, a reading at 15 s ending
    the condition: the alarm raised at 10 s and clears at 15 s. The reading used to cancel
    the pending on-delay, and the raise that fell due never happened."""
    sim = Sim({"id": "hot", "when": "v > 10", "for": "10s"})
    sim.feed(0, v=11.0)
    sim.engine.process("meter-1", [Reading("m", {}, {"v": 1.0}, 0)], 1_000_015.0)
    sim.log.extend(sim.engine.take()[0])
    assert stamps(sim) == [(10.0, "hot", "raise"), (15.0, "hot", "clear")]
