"""``iotgw run``: the one asyncio process that owns drivers, pipeline and forwarders.

Task names: ``pipeline``, ``device:<id>``, ``sink:<name>``. SIGTERM/SIGINT stop the
gateway within ``gateway.shutdown_timeout`` with every queued reading committed;
SIGHUP reloads the config file, touching only what changed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import openssl_gate
from gateway.alarms import services as _alarm_outputs  # noqa: F401 - registers alarm-actions
from gateway.alarms.model import AlarmService
from gateway.buffer import AsyncBuffer, Buffer
from gateway.config.loader import LoadedConfig, load_config
from gateway.driver import DeviceConfigBase, DeviceContext, DeviceState, DeviceStatus, Driver
from gateway.errors import CommandRefused, ConfigError
from gateway.forwarder import Forwarder
from gateway.health import services as _health  # noqa: F401 - registers health services
from gateway.instancelock import instance_lock
from gateway.memory import release_free_heap
from gateway.pipeline import Pipeline
from gateway.plugin import DeadLetter, SectionT
from gateway.pseudonym import Pseudonymizer
from gateway.reading import Reading
from gateway.registry import DRIVER_TYPES, SERVICES
from gateway.restart import (
    Restart,
    changed_at_start,
    check_with_openssl,
    for_openssl,
    openssl_needed,
)
from gateway.shared import SharedResources
from gateway.sinks import SINK_TYPES
from gateway.sinks.base import SinkConfigBase
from gateway.stats import GatewayStats
from gateway.supervisor import Supervisor, TaskStarter

if TYPE_CHECKING:
    from gateway.alarms.service import AlarmRuntime

log = logging.getLogger("iotgw.runtime")


class Gateway:
    def __init__(self, config: LoadedConfig) -> None:
        self.config = config
        self.stats = GatewayStats()
        self.started = time.time()
        self.devices: dict[str, DeviceContext] = {}
        self.drivers: dict[str, Driver] = {}
        self.resources = SharedResources()
        self._state_listeners: list[Callable[[str, DeviceStatus], None]] = []
        self._dead_letter_listeners: list[Callable[[DeadLetter], None]] = []
        self._alarms_listeners: list[Callable[[AlarmService], None]] = []
        self.service_runners: dict[str, Callable[[], Awaitable[None]]] = {}
        """The running services by name (the ops bus...), for tests and diagnostics."""
        self._device_configs: dict[str, DeviceConfigBase] = {}
        self._sink_configs: dict[str, SinkConfigBase] = {}
        self._sink_events: dict[str, asyncio.Event] = {}
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._stop_for_good = False
        self.restart: Restart | None = None
        """Set when the gateway stops to start again in place (gateway/restart.py): a
        reload changed what only a start sets up, or brought the first part that needs
        OpenSSL into a process that started without it; ``iotgw run`` executes itself."""
        self.reload_problems: list[str] = []
        """Why the last reload was rejected (for the ops bus's answer)."""
        self._reloading = asyncio.Lock()
        """One reload at a time: SIGHUP and ``cmd/reload`` both call ``reload``, and a
        second one interleaved at the first's awaits (stopping devices) deleted what the
        first had just re-added (an outside probe: ``KeyError`` answers, half-applied
        configs)."""
        buf = config.model.buffer
        self.buffer = AsyncBuffer(Buffer(config.buffer_path, max_bytes=buf.max_bytes,
                                         when_full=buf.when_full, synchronous=buf.synchronous,
                                         min_free=buf.min_free))
        self.pipeline: Pipeline | None = None
        self.supervisor: Supervisor | None = None
        self.exit_when_stuck: Callable[[], None] | None = None
        """Called at the end of a stop whose final commit is stuck in the buffer's thread
        (``iotgw run`` ends the process there: waiting for that thread is what overran
        ``shutdown_timeout``); None (in-process use) waits for it as before."""
        self._stuck_commit: asyncio.Future[None] | None = None
        self._alarms: AlarmRuntime | None = None
        self._alarms_waiting: list[Callable[[AlarmService], None]] = []

    @property
    def alarms(self) -> AlarmService | None:
        """The alarm engine (docs/alarms.md); None when no rules are configured. Set
        before any service starts, so outputs may subscribe in their factory."""
        return self._alarms

    def on_alarms(self, callback: Callable[[AlarmService], None]) -> None:
        """Call ``callback`` with the alarm engine now if it runs, else when a reload
        brings the first rules: outputs subscribe through this and never miss it."""
        if self._alarms is not None:
            callback(self._alarms)
        else:
            self._alarms_waiting.append(callback)

    # -- control from outside (signals, ops commands, tests) -------------------------

    def request_stop(self) -> None:
        """Stop for good (SIGTERM, SIGINT, tests): also cancels a restart in place that
        a reload asked for while the stop runs (an outside probe: a SIGTERM a few ms
        after such a reload was swallowed and the gateway came back; under systemd a
        stop would have waited for TimeoutStopSec and SIGKILL)."""
        self._stop_for_good = True
        self._stop.set()

    @property
    def pending_restart(self) -> Restart | None:
        """The restart in place to do once stopped, unless a stop for good came too."""
        return None if self._stop_for_good else self.restart

    def _task_failed(self, name: str, exc: BaseException) -> None:
        held_back = openssl_gate.held_back_import(exc)
        if held_back is not None:
            self._needs_openssl(f"task {name}", held_back)

    def _needs_openssl(self, what: str, exc: openssl_gate.OpenSSLHeldBack) -> None:
        """A part that said it needs no OpenSSL imported it after all: stop, and let
        ``iotgw run`` start the gateway again with it (the part fails until then)."""
        self._restart_in_place(for_openssl([f"{what}: {openssl_gate.importer(exc)}"]))

    def _restart_in_place(self, restart: Restart) -> None:
        if self.restart is None:
            self.restart = restart
            self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        with instance_lock(self.config.buffer_path):
            await self._run()

    async def _run(self) -> None:
        cfg = self.config
        await self.buffer.open()
        await self.buffer.register_sinks([s.sink_name for s in cfg.sinks])
        self.pipeline = Pipeline(
            self.buffer, self.stats, site=cfg.model.gateway.site,
            gateway_id=cfg.model.gateway.id, flush_interval=cfg.model.buffer.flush_interval,
            max_pending=cfg.model.buffer.max_pending)
        hide = load_pseudonymizer(cfg)  # one key read serves the pipeline and the rules
        self.pipeline.set_pseudonymizer(hide)
        await self._open_alarms(cfg, hide)
        try:
            async with asyncio.TaskGroup() as group:
                self.supervisor = Supervisor(group, on_any_failure=self._task_failed)
                self.supervisor.start("pipeline", self.pipeline.run)
                if self._alarms is not None:
                    self.supervisor.start("alarms", self._alarms.run)
                for sink in cfg.sinks:
                    self._start_sink(sink)
                for device in cfg.devices:
                    self._start_device(device)
                if cfg.model.mqtt is not None:  # paho is imported only for a gateway with MQTT
                    import_module("gateway.mqtt.ops")  # registers the "ops-bus" service
                for service in SERVICES:
                    try:
                        runner = service.factory(self)
                    except openssl_gate.OpenSSLHeldBack as exc:  # its library imports ssl
                        self._needs_openssl(f"service {service.name}", exc)
                        break
                    if runner is not None:
                        self.service_runners[service.name] = runner
                        self.supervisor.start(f"service:{service.name}", runner)
                log.info("gateway %s (site %s) running: %d devices, sinks: %s",
                         cfg.model.gateway.id, cfg.model.gateway.site, len(cfg.devices),
                         ", ".join(s.sink_name for s in cfg.sinks))
                release_free_heap()  # start-up's freed memory back to the system
                await self._serve_control()
                await self._shutdown()
        finally:
            await self.buffer.close()

    async def _serve_control(self) -> None:
        while not self._stop.is_set():
            stop = asyncio.ensure_future(self._stop.wait())
            reload = asyncio.ensure_future(self._reload.wait())
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            reload.cancel()
            if self._reload.is_set() and not self._stop.is_set():
                self._reload.clear()
                await self.reload()

    async def _shutdown(self) -> None:
        """Drivers first (no new readings), then the last commit, then the forwarders.

        Forwarders are cancelled rather than drained: anything unsent is committed in
        the buffer and goes out after the next start, so the deadline stays bounded."""
        assert self.supervisor is not None and self.pipeline is not None
        deadline = time.monotonic() + self.config.model.gateway.shutdown_timeout
        log.info("stopping")
        devices = [n for n in self.supervisor.names() if n.startswith("device:")]
        await self.supervisor.stop(devices, timeout=max(0.1, (deadline - time.monotonic()) / 3))
        await self.supervisor.stop(["pipeline"], timeout=0.5)
        committed = await self._final_commit(max(0.1, deadline - time.monotonic() - 0.5))
        if self._alarms is not None:
            await self.supervisor.stop(["alarms"], timeout=0.5)
            await self._alarms.close()
        await self.supervisor.stop(None, timeout=max(0.1, deadline - time.monotonic() - 0.2))
        log.info("stopped: %d readings received, %d committed this run",
                 self.stats.readings_in, self.stats.readings_committed,
                 extra={"readings_in": self.stats.readings_in,
                        "readings_committed": self.stats.readings_committed})
        if not committed and self.exit_when_stuck is not None:
            self.exit_when_stuck()

    async def _final_commit(self, budget: float) -> bool:
        """Commit what is queued and wait for every commit already running, at most
        ``budget`` seconds; False if the buffer's thread did not get through in time.

        A commit stuck in the buffer's thread (fsync on a frozen or dying disk) cannot be
        cancelled, and ``Pipeline.flush`` rightly waits for it even when cancelled: a
        timeout around it did not bound the stop (an outside probe: 20 s, until the disk
        thawed). So the work runs as a task that is waited for, not cancelled, and is
        left behind when the time is up. The no-op query behind the flush is a barrier:
        the buffer's one worker runs calls in order, so it answers once every commit
        before it (the pipeline's own, interrupted by the stop) has finished."""
        assert self.pipeline is not None
        pipeline = self.pipeline
        queued = pipeline.pending

        async def commit_all() -> None:
            await pipeline.flush()
            await self.buffer.query(lambda _conn: None)

        work = asyncio.ensure_future(commit_all())
        done, _ = await asyncio.wait({work}, timeout=budget)
        if not done:
            self._stuck_commit = work  # keeps the task referenced while it waits
            log.error("final commit did not complete within %.1fs: the buffer's thread is "
                      "still writing (a stalled disk?); %d queued readings, and those of a "
                      "commit already running, may or may not be stored (the buffer at the "
                      "next start has them or not)", budget, queued)
            return False
        if (exc := work.exception()) is not None:
            log.error("final commit failed, %d queued readings not stored: %s",
                      pipeline.pending, exc)
        return True

    # -- alarms ----------------------------------------------------------------------

    def _uplink_lost(self) -> bool:
        """Every sink is failing or retrying: the ``uplink_lost`` name of rule conditions."""
        sinks = self.stats.sinks
        return bool(sinks) and all(s.state in ("retrying", "failed") for s in sinks.values())

    async def _open_alarms(self, cfg: LoadedConfig, hide: Pseudonymizer | None) -> None:
        assert self.pipeline is not None
        if not cfg.model.rules:
            return  # the engine, its journal and state are not even imported
        from gateway.alarms import service as alarm_service

        pipeline = self.pipeline
        runtime = alarm_service.create(cfg, self.buffer, hide,
                                       self._uplink_lost, pipeline.notify_committed)
        if runtime is None:
            return
        await runtime.open()
        self._alarms = runtime
        for listener in self._alarms_listeners:  # before its first transition is announced
            listener(runtime)
        pipeline.add_listener(runtime.on_readings)
        self.add_state_listener(
            lambda device_id, status: runtime.on_device_state(device_id, status.state.value))
        waiting, self._alarms_waiting = self._alarms_waiting, []
        for callback in waiting:
            callback(runtime)

    # -- devices and sinks -----------------------------------------------------------

    def _start_device(self, device: DeviceConfigBase) -> None:
        assert self.supervisor is not None and self.pipeline is not None
        driver_type = DRIVER_TYPES[device.driver]
        bus_name = getattr(device, "bus", None)
        ctx = DeviceContext(device.id, self._emit, self._state_changed, bus_name=bus_name,
                            bus=self.config.model.buses.get(bus_name) if bus_name else None,
                            resources=self.resources, gateway=self)
        self.devices[device.id] = ctx
        self._device_configs[device.id] = device
        self.pipeline.set_device(device.id, device.tags, device.pseudonymize)
        driver = driver_type.driver_class(device, ctx)
        self.drivers[device.id] = driver
        self._state_changed(device.id, ctx.status)

        def crashed(exc: BaseException) -> None:
            ctx.set_state(DeviceState.ERROR, f"driver failed: {type(exc).__name__}: {exc}")

        self.supervisor.start(f"device:{device.id}", driver.run, on_failure=crashed)

    def _state_changed(self, device_id: str, status: DeviceStatus) -> None:
        for listener in self._state_listeners:
            listener(device_id, status)

    def add_state_listener(self, listener: Callable[[str, DeviceStatus], None]) -> None:
        """Called on every device state change (the ops bus publishes it retained)."""
        self._state_listeners.append(listener)

    # -- commands (the ops bus calls these) ------------------------------------------

    def _driver(self, device_id: str) -> Driver:
        driver = self.drivers.get(device_id)
        if driver is None:
            raise CommandRefused(f"unknown device {device_id!r}")
        return driver

    async def write_point(self, device_id: str, point: str, value: Any) -> dict[str, Any]:
        """Write one point of one device, if the installer allow-listed it."""
        driver = self._driver(device_id)
        if point not in self._device_configs[device_id].allow_write:
            raise CommandRefused(f"point {point!r} of {device_id!r} is not in allow_write")
        return await driver.write(point, value)

    async def poll_device(self, device_id: str) -> None:
        await self._driver(device_id).poll_now()

    async def _emit(self, device_id: str, readings: Sequence[Reading]) -> None:
        assert self.pipeline is not None
        await self.pipeline.submit(device_id, readings)

    def _start_sink(self, sink_config: SinkConfigBase) -> None:
        assert self.supervisor is not None and self.pipeline is not None
        name = sink_config.sink_name
        sink = SINK_TYPES[sink_config.type].factory(
            sink_config, self.config.data_dir)
        event = self.pipeline.subscribe()
        event.set()
        self._sink_configs[name] = sink_config
        self._sink_events[name] = event
        forwarder = Forwarder(sink, sink_config, self.buffer, event, self.stats)

        def crashed(exc: BaseException) -> None:
            sink_stats = self.stats.sink(name)
            sink_stats.state = "failed"
            sink_stats.errors += 1
            sink_stats.last_error = f"forwarder failed: {type(exc).__name__}: {exc}"

        self.supervisor.start(f"sink:{name}", forwarder.run, on_failure=crashed)

    async def _stop_sink(self, name: str) -> None:
        assert self.supervisor is not None and self.pipeline is not None
        await self.supervisor.stop([f"sink:{name}"])
        self.pipeline.unsubscribe(self._sink_events.pop(name))
        del self._sink_configs[name]

    async def _stop_device(self, device_id: str) -> None:
        assert self.supervisor is not None
        await self.supervisor.stop([f"device:{device_id}"])
        del self._device_configs[device_id]
        self.devices.pop(device_id, None)
        self.drivers.pop(device_id, None)

    # -- the plugin API (gateway.plugin.GatewayHandle) --------------------------------

    @property
    def gateway_id(self) -> str:
        return self.config.model.gateway.id

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def tasks(self) -> TaskStarter:
        if self.supervisor is None:
            raise RuntimeError("the gateway is not running")
        return self.supervisor

    def section(self, name: str, model: type[SectionT]) -> SectionT | None:
        value = getattr(self.config.model, name, None)
        if value is None:
            return None
        if not isinstance(value, model):
            raise TypeError(f"config section {name!r} is a {type(value).__name__}, "
                            f"not a {model.__name__}")
        return value

    async def submit(self, device_id: str, readings: Sequence[Reading]) -> None:
        assert self.pipeline is not None
        await self.pipeline.submit(device_id, readings)

    async def wait_committed(self) -> None:
        assert self.pipeline is not None
        await self.pipeline.wait_committed()

    async def wait_stored(self) -> bool:
        assert self.pipeline is not None
        return await self.pipeline.wait_stored()

    def counters(self, connection: str) -> Counter[str]:
        return self.stats.connections.setdefault(connection, Counter())

    def dead_letter(self, letter: DeadLetter) -> None:
        for listener in self._dead_letter_listeners:
            listener(letter)

    def add_alarms_listener(self, listener: Callable[[AlarmService], None]) -> None:
        """``listener(engine)`` when an alarm engine starts: now if one runs, else when a
        reload brings the first rules, before that engine announces anything (outputs
        subscribe to its transitions there and miss none)."""
        self._alarms_listeners.append(listener)
        if self._alarms is not None:
            listener(self._alarms)

    def add_dead_letter_listener(self, listener: Callable[[DeadLetter], None]) -> None:
        """The ops bus publishes each refused input on its ``errors`` topic."""
        self._dead_letter_listeners.append(listener)

    # -- reload ----------------------------------------------------------------------

    async def reload(self) -> bool:
        """Apply a changed config file; a bad file is rejected and the old config stays.

        Requests made while one runs wait for it, then each reads the file again (the
        last one applies the newest file)."""
        async with self._reloading:
            return await self._reload_now()

    async def _reload_now(self) -> bool:
        self.reload_problems = []
        try:
            new = await asyncio.to_thread(load_config, self.config.path)
        except ConfigError as exc:
            log.error("reload rejected, keeping the running config:\n%s", exc)
            self.reload_problems = exc.problems
            return False
        except openssl_gate.OpenSSLHeldBack as exc:  # a plugin's module imports ssl
            problems = await check_with_openssl(self.config.path)
            if problems:
                log.error("reload rejected, keeping the running config:\n%s",
                          "\n".join(problems))
                self.reload_problems = problems
                return False
            self._needs_openssl("reloaded config", exc)
            return True
        except Exception as exc:  # a bug in loading must not stop a running gateway
            log.error("reload rejected, keeping the running config: cannot load %s: %s: %s",
                      self.config.path, type(exc).__name__, exc, exc_info=exc)
            self.reload_problems = [f"cannot load {self.config.path}: "
                                    f"{type(exc).__name__}: {exc}"]
            return False
        needed = openssl_needed(new)
        if needed is not None:  # this process cannot load it any more (asyncio is loaded)
            self._restart_in_place(needed)
            return True
        changed = changed_at_start(self.config, new)
        if changed:
            self._restart_in_place(Restart(tuple(changed), config_digest=new.digest))
            return True
        assert self.pipeline is not None
        old = self.config
        hide = load_pseudonymizer(new)
        self.pipeline.set_pseudonymizer(hide)
        if new.model.gateway != old.model.gateway:
            self.pipeline.set_site(new.model.gateway.site, new.model.gateway.id)
        # Before any device or sink starts: their tasks read the config through the
        # plugin handle (section(), data_dir) on their first await, and a device added
        # with its mqtt: section in the same reload failed "needs the mqtt: section".
        self.config = new

        wanted_devices = {d.id: d for d in new.devices}
        changed = [i for i, d in self._device_configs.items() if wanted_devices.get(i) != d]
        for device_id in changed:
            await self._stop_device(device_id)
        for device_id, device in wanted_devices.items():
            if device_id not in self._device_configs:
                self._start_device(device)

        wanted_sinks = {s.sink_name: s for s in new.sinks}
        stale = [n for n, s in self._sink_configs.items() if wanted_sinks.get(n) != s]
        for name in stale:
            await self._stop_sink(name)
        await self.buffer.register_sinks(list(wanted_sinks))
        for name, sink in wanted_sinks.items():
            if name not in self._sink_configs:
                self._start_sink(sink)
        if self._alarms is not None:
            await self._alarms.reload(new, hide)
        elif new.model.rules:
            await self._open_alarms(new, hide)
            if self._alarms is not None and self.supervisor is not None:
                self.supervisor.start("alarms", self._alarms.run)
        log.info("config reloaded: %d devices restarted or removed, %d sinks restarted or "
                 "removed", len(changed), len(stale))
        release_free_heap()
        return True


def load_pseudonymizer(config: LoadedConfig) -> Pseudonymizer | None:
    privacy = config.model.privacy
    if privacy is None:
        return None
    return Pseudonymizer(privacy.key_file.read_bytes().strip(), privacy.length)


async def run_gateway(config: LoadedConfig,
                      reload_pending: Callable[[], bool] | None = None) -> Restart | None:
    """Run until SIGTERM/SIGINT. ``reload_pending()`` says whether a SIGHUP came after
    ``config`` was read and before the loop's handler was installed (``iotgw run``
    remembers those): asked after the handler is in place, so no HUP falls in between.

    Returns why the gateway stopped to start again in place (``Gateway.restart``), or
    None after an ordinary stop."""
    gateway = Gateway(config)
    gateway.exit_when_stuck = exit_abandoning_buffer
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.request_stop)
    loop.add_signal_handler(signal.SIGHUP, gateway.request_reload)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
    if reload_pending is not None and reload_pending():
        log.info("SIGHUP while starting, after the config was read: reloading it once "
                 "running")
        gateway.request_reload()
    await gateway.run()
    return gateway.pending_restart


EXIT_COMMIT_STUCK = 1


def exit_abandoning_buffer() -> None:
    """End the process now, leaving the buffer's thread in its stuck commit.

    The TaskGroup, the buffer's close and the interpreter's exit would all wait for that
    thread. SQLite's journal makes the commit it was in either whole or absent at the next
    open; the flock is the kernel's to release. A thread in uninterruptible disk sleep
    still holds the process until the kernel lets it go (even SIGKILL waits), but nothing
    of the gateway's own waits any longer."""
    logging.shutdown()  # every log line out before the exit
    os._exit(EXIT_COMMIT_STUCK)


def dump_tasks() -> None:
    """SIGUSR1: log every task and where it waits, to diagnose a stuck gateway on site."""
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=8)
        where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
        log.warning("task %s: %s", task.get_name(), where or "(not started)")
