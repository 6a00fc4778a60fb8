"""``iotgw rules check|test`` and ``iotgw alarms``: try rules before deploying them, and
read the alarm journal without a running gateway."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.alarms.model import Transition


def _when(at: float) -> str:
    if not isinstance(at, (int, float)):  # a damaged row: shown, not a traceback
        return repr(at)
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def add_parser(sub: Any) -> None:
    rules = sub.add_parser("rules", help="check alarm rules, or test them on recorded data")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_sub.add_parser("check", help="validate the config's rules and list them")
    check.add_argument("config")
    check.set_defaults(func=cmd_rules_check)
    test = rules_sub.add_parser(
        "test", help="replay readings through the rules in simulated time; print every "
        "transition")
    test.add_argument("config")
    source = test.add_mutually_exclusive_group(required=True)
    source.add_argument("--replay", metavar="FILE", type=Path,
                        help="line protocol (the file sink's files, a store's export)")
    source.add_argument("--from-buffer", action="store_true",
                        help="the readings still held in the gateway's buffer")
    test.add_argument("--json", action="store_true", help="one JSON object per transition")
    test.set_defaults(func=cmd_rules_test)

    alarms = sub.add_parser("alarms", help="the saved alarms and recent journal, read from "
                            "the buffer (the gateway may be running or not)")
    alarms.add_argument("config")
    alarms.add_argument("--journal", type=int, default=20, metavar="N",
                        help="newest N journal entries (default 20; 0: none)")
    alarms.add_argument("--json", action="store_true")
    alarms.set_defaults(func=cmd_alarms)


def cmd_rules_check(args: argparse.Namespace) -> int:
    from gateway.alarms.checks import rule_warnings
    from gateway.alarms.rules import compile_rule, describe
    from gateway.cli import _load_or_exit

    config = _load_or_exit(args.config)
    rules = [compile_rule(r) for r in config.model.rules]
    for rule in rules:
        d = describe(rule)
        delay = f", for {d['for']:g}s" if d["for"] else ""
        print(f"{d['id']}: {d['kind']}, severity {d['severity']}{delay}"
              + (f", reads {', '.join(d['trigger'])}" if d["trigger"] else ""))
    warnings = rule_warnings(config.model, config.path.resolve().parent)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{len(rules)} rule(s) OK" + (f", {len(warnings)} warning(s)" if warnings else ""))
    return 0


def _transition_dict(t: Transition) -> dict[str, Any]:
    a = t.alarm
    return {"at": t.at, "rule": a.key.rule, "device": a.key.device, "cause": t.cause,
            "state": a.state.value, "previous": t.previous.value, "severity": a.severity,
            "seq": a.seq, "value": a.value, "message": a.message}


def cmd_rules_test(args: argparse.Namespace) -> int:
    from gateway.alarms.engine import Engine
    from gateway.alarms.replay import read_buffer, read_file, replay
    from gateway.alarms.service import build_rules, device_infos
    from gateway.cli import _load_or_exit
    from gateway.runtime import load_pseudonymizer

    config = _load_or_exit(args.config)
    rules = build_rules(config, load_pseudonymizer(config))
    engine = Engine(rules, devices=device_infos(config), settings=config.model.alarms)
    if args.from_buffer:
        if not config.buffer_path.is_file():
            print(f"no buffer at {config.buffer_path}", file=sys.stderr)
            return 1
        lines = read_buffer(config.buffer_path)
    else:
        try:
            args.replay.stat()
        except OSError as exc:
            print(f"cannot read {args.replay}: {exc.strerror}", file=sys.stderr)
            return 1
        lines = read_file(args.replay)
    errors: list[str] = []
    count = 0
    try:
        for t in replay(engine, lines, errors):
            count += 1
            if args.json:
                print(json.dumps(_transition_dict(t), default=str))
            else:
                a = t.alarm
                print(f"{_when(t.at)}  {a.key.rule}/{a.key.device}  {t.cause:<9} "
                      f"{t.previous.value} -> {a.state.value}  sev {a.severity}  seq {a.seq}"
                      + (f"  value {a.value}" if a.value is not None else "")
                      + (f"  {a.message}" if a.message else ""))
    except OSError as exc:
        print(exc, file=sys.stderr)
        return 1
    for error in errors[:10]:
        print(f"skipped {error}", file=sys.stderr)
    if len(errors) > 10:
        print(f"skipped {len(errors) - 10} more lines", file=sys.stderr)
    c = engine.counters
    print(f"{c.readings} readings, {c.evaluations} evaluations, {count} transitions, "
          f"{sum(c.rule_errors.values())} rule errors", file=sys.stderr)
    return 0


def cmd_alarms(args: argparse.Namespace) -> int:
    from gateway.alarms.journal import read_offline
    from gateway.cli import _load_or_exit

    config = _load_or_exit(args.config)
    try:
        alarms, journal = read_offline(config.buffer_path, limit=max(0, args.journal))
    except (OSError, Exception) as exc:
        print(f"cannot read {config.buffer_path}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"alarms": alarms, "journal": [e.__dict__ for e in journal]},
                         default=str, indent=2))
        return 0
    if not alarms:
        print("no alarms recorded")
    for a in alarms:
        print(f"{a['rule']}/{a['device']}: {a['state']}  sev {a['severity']}  seq {a['seq']}  "
              f"since {_when(a['since']) if a['seq'] else '-'}"  # seq 0: never changed
              + (f"  {a['message']}" if a["message"] else ""))
    if journal:
        print("\njournal (oldest first):")
    for e in journal:
        who = f" by {e.client}" if e.client else ""
        print(f"{_when(e.at)}  {e.rule}/{e.device}  {e.cause}{who}: {e.previous} -> {e.state}"
              f"  seq {e.seq}")
    return 0
