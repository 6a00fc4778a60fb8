"""The push receiver: one per gateway, shared by every camera_push device
(``SharedResources`` key ``("http", "receiver")``, the shared-connection pattern of
:mod:`gateway.plugin`). It owns the routing table (device id -> endpoint), the checks
that refuse a post, deduplication, and the commit-then-answer rule; the HTTP plumbing
is :mod:`drivers.camera_push.server`, the only module that imports aiohttp.

A post goes through, in order: route (404), source address (403), token (401,
constant-time), method (405), encoding and size (415, 413: refused before the body is
read when Content-Length says so, else while it arrives), payload (415, 400), then the
device's event id (a retry gets the first answer), submit, wait for the commit, answer.
Every refusal is counted (per device when the device is known), logged once per kind
and device (then a summary every few minutes), and never reaches the buffer. Payload
refusals of a known device are dead-lettered, without the payload when the device
pseudonymises fields (the raw plate or card must not leave the process).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import time
from dataclasses import dataclass, field

from drivers.camera_push.allowlist import AllowList
from drivers.camera_push.config import CameraPushConfig
from drivers.camera_push.dedup import Dedup
from drivers.camera_push.images import ImageStore
from drivers.camera_push.payload import Answer, Parsed, Refused
from drivers.camera_push.profiles import Profile, make_profile
from gateway.config.models import HttpSection, PrivacySection
from gateway.driver import DeviceContext, DeviceState
from gateway.errors import DeviceError
from gateway.plugin import DeadLetter, GatewayHandle
from gateway.problems import ProblemLog
from gateway.pseudonym import Pseudonymizer
from gateway.reading import Reading

log = logging.getLogger("iotgw.camera_push")
TASK = "http:receiver"
SUMMARY_EVERY = 300.0
"""A refusal that keeps coming is summarised in one log line per this many seconds."""
DEAD_LETTER_BYTES = 4096
PAYLOAD_REFUSALS = frozenset({400, 413, 415})


def masked_path(device_id: str) -> str:
    """The push path as it may be shown: the token is a secret."""
    return f"/push/{device_id}/***"


@dataclass
class Endpoint:
    """One device as the receiver sees it."""

    config: CameraPushConfig
    ctx: DeviceContext
    profile: Profile
    dedup: Dedup
    token: bytes
    allow: AllowList | None = None
    last_post: float | None = None
    """Wall-clock time of the last valid post (event, heartbeat or poll)."""
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)

    @property
    def device_id(self) -> str:
        return self.ctx.device_id

    def source_allowed(self, peer: str | None) -> bool:
        if not self.networks:
            return True
        if peer is None:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def token_ok(self, token: str) -> bool:
        return hmac.compare_digest(token.encode("utf-8", "surrogateescape"), self.token)

    def seen(self) -> None:
        now = time.time()
        self.last_post = now
        self.ctx.status.last_seen = now
        self.ctx.set_state(DeviceState.ONLINE)

    def opens(self, plate: str | None) -> bool:
        return self.allow is not None and plate is not None and self.allow.opens(plate)


class PushReceiver:
    def __init__(self, gateway: GatewayHandle, settings: HttpSection) -> None:
        self.gateway = gateway
        self.settings = settings
        self.endpoints: dict[str, Endpoint] = {}
        self.counters = gateway.counters("http-receiver")
        self.problems = ProblemLog(log)
        self.failure: str | None = None
        self.images = (ImageStore(settings.images.dir, settings.images.max_bytes)
                       if settings.images is not None else None)
        privacy = gateway.section("privacy", PrivacySection)
        if privacy is not None:
            self._hash = Pseudonymizer(privacy.key_file.read_bytes().strip(), privacy.length)
            self._keyed = True
        else:  # nothing is stored hashed without a key; the list only needs consistency
            self._hash = Pseudonymizer(os.urandom(32))
            self._keyed = False
        from drivers.camera_push.server import HttpServer

        self.server = HttpServer(self, settings)

    @classmethod
    async def create(cls, gateway: GatewayHandle) -> PushReceiver:
        settings = gateway.section("http", HttpSection)
        if settings is None:
            raise DeviceError("the camera_push driver needs the gateway's http: section")
        receiver = cls(gateway, settings)
        gateway.tasks.start(TASK, receiver.server.run, on_failure=receiver._failed,
                            on_recovered=receiver._recovered)
        return receiver

    def _failed(self, exc: BaseException) -> None:
        self.failure = f"push receiver failed: {type(exc).__name__}: {exc}"
        self.counters["task_failures"] += 1

    def _recovered(self) -> None:
        self.failure = None

    async def close(self) -> None:
        await self.gateway.tasks.stop([TASK])

    # -- devices -----------------------------------------------------------------------

    def attach(self, config: CameraPushConfig, ctx: DeviceContext) -> Endpoint:
        allow = None
        if config.allow_list is not None:
            allow = AllowList(config.allow_list, self._hash, self._keyed)
        dedup = Dedup(self.settings.dedup_size,
                      self.gateway.data_dir / "camera_push" / f"{ctx.device_id}.ids")
        if dedup.load_error is not None:
            self.problems.report(f"dedup:{ctx.device_id}", f"device {ctx.device_id}: "
                                 f"event ids of the last run not read ({dedup.load_error}); a "
                                 "retry of one of them is stored again", level=logging.WARNING)
        endpoint = Endpoint(config, ctx, make_profile(config), dedup,
                            config.token_value().encode("utf-8"), allow,
                            networks=list(config.sources))
        self.endpoints[ctx.device_id] = endpoint
        return endpoint

    def detach(self, endpoint: Endpoint) -> None:
        if self.endpoints.get(endpoint.device_id) is endpoint:
            del self.endpoints[endpoint.device_id]

    # -- the checks ----------------------------------------------------------------------

    def lookup(self, device_id: str) -> Endpoint:
        endpoint = self.endpoints.get(device_id)
        if endpoint is None:
            raise Refused(404, "unknown_device", f"device {device_id[:64]!r}")
        return endpoint

    @staticmethod
    def authorize(endpoint: Endpoint, token: str, peer: str | None) -> None:
        """Source first (it reveals nothing about the token), then the token."""
        if not endpoint.source_allowed(peer):
            raise Refused(403, "source_not_allowed", "address not in sources")
        if not endpoint.token_ok(token):
            raise Refused(401, "bad_token", "wrong token in the path")

    def refused(self, exc: Refused, endpoint: Endpoint | None, peer: str | None,
                body: bytes | None = None, content_type: str = "") -> None:
        """Count, log once per kind and device, dead-letter a known device's payload."""
        self.counters[exc.reason] += 1
        who = f"device {endpoint.device_id}" if endpoint is not None else "an unknown sender"
        if endpoint is not None:
            endpoint.ctx.count(exc.reason)
        self.problems.report(
            f"{exc.reason}:{endpoint.device_id if endpoint else '-'}",
            f"push from {who} refused with {exc.status} ({exc.reason})",
            detail=f"{exc.detail[:200]}; from {peer}", level=logging.WARNING,
            summary_every=SUMMARY_EVERY, kind=exc.reason)
        if endpoint is not None and exc.status in PAYLOAD_REFUSALS:
            private = bool(endpoint.config.pseudonymize)
            payload = b"" if private or body is None else body[:DEAD_LETTER_BYTES]
            note = " (payload withheld: the device pseudonymises fields)" if private else ""
            self.gateway.dead_letter(DeadLetter(
                endpoint.device_id, f"{exc.reason}: {exc.detail[:200]}{note}", payload,
                masked_path(endpoint.device_id)))

    # -- a valid post ----------------------------------------------------------------------

    async def process(self, endpoint: Endpoint, content_type: str, body: bytes) -> Answer:
        """Decode, deduplicate, commit, answer. Raises Refused for a payload it refuses
        (400/415) or a commit that did not come in time (503). A post carrying several
        events has each stored in turn under its own key, and is answered after the last:
        a retry after a 503 half-way stores only those not yet committed."""
        parsed = endpoint.profile.parse(content_type, body, time.time_ns())
        endpoint.seen()
        if parsed.reading is None:
            return endpoint.profile.answer(parsed, False)
        answer = await self._event(endpoint, parsed, body)
        for more in parsed.more:  # a post with several events: each stored, in order
            answer = await self._event(endpoint, more, body)
        return answer

    async def _event(self, endpoint: Endpoint, parsed: Parsed, body: bytes) -> Answer:
        """One event: deduplicated by its own key, committed, journalled."""
        key = parsed.key
        if key is not None:
            done = endpoint.dedup.answered(key)
            if done is not None:
                endpoint.ctx.count("duplicate")
                return done
            pending = endpoint.dedup.pending(key)
            if pending is not None:
                endpoint.ctx.count("duplicate")
                return await asyncio.shield(pending)
            endpoint.dedup.begin(key)
        try:
            answer = await self._commit(endpoint, parsed)
            if key is not None:
                await self._journal(endpoint, key, answer)
        except BaseException as exc:
            if key is not None:
                endpoint.dedup.finish(key, None, exc)
            raise
        if key is not None:
            endpoint.dedup.finish(key, answer, None)
        if parsed.dropped:
            self._dropped(endpoint, parsed.dropped, body)
        return answer

    def _dropped(self, endpoint: Endpoint, dropped: list[Refused], body: bytes) -> None:
        """Values left out of a stored event (a field of the wrong type, a tag too long):
        counted per device, logged once per kind and device, and the post dead-lettered
        like a refused one (without the payload when the device pseudonymises fields), so
        the refused value is not lost without a trace. Reported once the event is
        committed: a retry that is answered from the dedup memory counts nothing again."""
        for exc in dropped:
            endpoint.ctx.count(exc.reason)
            self.problems.report(
                f"{exc.reason}:{endpoint.device_id}",
                f"device {endpoint.device_id}: a value left out of its posts ({exc.reason}); "
                "the rest of the event is stored", detail=exc.detail[:200],
                level=logging.WARNING, summary_every=SUMMARY_EVERY, kind=exc.reason)
        private = bool(endpoint.config.pseudonymize)
        note = " (payload withheld: the device pseudonymises fields)" if private else ""
        reasons = "; ".join(f"{exc.reason}: {exc.detail[:120]}" for exc in dropped[:4])
        self.gateway.dead_letter(DeadLetter(
            endpoint.device_id, f"{reasons} (the rest of the event is stored){note}"[:600],
            b"" if private else body[:DEAD_LETTER_BYTES], masked_path(endpoint.device_id)))

    async def _journal(self, endpoint: Endpoint, key: str, answer: Answer) -> None:
        """The committed id, durably, before the answer: a retry after a restart (the
        gateway killed between commit and answer) is then recognised."""
        try:
            await endpoint.dedup.persist(key, answer)
        except OSError as exc:  # the event is committed: answer it all the same
            endpoint.ctx.count("dedup_journal_failed")
            self.problems.report(f"dedup_journal:{endpoint.device_id}",
                                 f"device {endpoint.device_id}: cannot journal event ids in "
                                 f"{endpoint.dedup.journal}: {exc}; a retry after a restart "
                                 "would be stored again", level=logging.WARNING,
                                 summary_every=SUMMARY_EVERY)

    async def _commit(self, endpoint: Endpoint, parsed: Parsed) -> Answer:
        opens = endpoint.opens(parsed.plate)
        answer = endpoint.profile.answer(parsed, opens)
        assert parsed.reading is not None
        reading = parsed.reading
        extra: dict[str, bool | int] = {}
        tags = reading.tags
        if endpoint.profile.opens_gate:
            extra["gate_open"] = opens
            if endpoint.allow is not None:  # the gateway decided: the contract's result tag
                tags = {**tags, "result": "granted" if opens else "denied"}
        if parsed.images:
            extra["image_count"] = len(parsed.images)
            extra["image_bytes"] = sum(len(i.data) for i in parsed.images)
            await self._save_images(endpoint, reading.time_ns, parsed)
        if extra or tags is not reading.tags:
            reading = Reading(reading.measurement, tags, {**reading.fields, **extra},
                              reading.time_ns)
        await self.gateway.submit(endpoint.device_id, (reading,))
        try:
            async with asyncio.timeout(self.settings.commit_timeout):
                stored = await self.gateway.wait_stored()
        except TimeoutError:
            raise Refused(503, "commit_timeout", f"not committed within "
                          f"{self.settings.commit_timeout:g}s (buffer stalled?)") from None
        if not stored:  # dropped in its own commit: the device must keep it and retry
            raise Refused(503, "buffer_full", "the buffer is full or short of disk space "
                          "and dropped this event's commit")
        return answer

    async def _save_images(self, endpoint: Endpoint, time_ns: int, parsed: Parsed) -> None:
        if self.images is None:
            return
        try:
            await self.images.save(endpoint.device_id, time_ns, parsed.images)
        except OSError as exc:  # a full disk costs the pictures, never the event
            endpoint.ctx.count("image_save_failed")
            self.problems.report(f"images:{endpoint.device_id}",
                                 f"device {endpoint.device_id}: cannot keep pictures in "
                                 f"{self.images.root}: {exc}", level=logging.WARNING,
                                 summary_every=SUMMARY_EVERY)
