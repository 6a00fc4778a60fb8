"""What every sink implements; the forwarder owns retries, splitting and cursors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydantic import Field

from gateway.config.types import Duration, StrictModel


class Sink(Protocol):
    """A destination for line protocol.

    ``write`` takes newline-separated line protocol (nanosecond precision) and either
    returns (the whole batch is stored) or raises one of the ``gateway.errors.Sink*``
    errors. Sinks do no retrying of their own: the forwarder decides, so the policy is
    the same for every sink.
    """

    name: str

    async def open(self) -> None: ...

    async def write(self, payload: bytes) -> None: ...

    async def close(self) -> None: ...


class SinkConfigBase(StrictModel):
    """Settings every sink has. Each sink module subclasses this with ``type: Literal[...]``.

    ``name`` identifies the sink's cursor in the buffer: renaming a sink makes it start
    from the oldest buffered reading, keeping the name keeps its place across restarts.
    """

    if TYPE_CHECKING:  # each subclass's Literal; declared here for code typed on the base
        type: str
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    batch_lines: int = Field(default=5000, ge=1, le=1_000_000)
    timeout: Duration = Field(default=10.0, ge=0.1, le=600, description="per request")
    retry_max: Duration = Field(default=60.0, ge=0.1, le=3600,
                                description="cap of the exponential backoff")
    auth_retry: Duration = Field(
        default=300.0, ge=1, le=86400,
        description="retry period while the sink is failed (401/403/404); at least 1 s, so a "
        "rejected credential never turns into a request storm",
    )

    @property
    def sink_name(self) -> str:
        return self.name or str(self.type)

    def needs_openssl(self) -> bool:
        """Whether this sink needs OpenSSL (see ``DeviceConfigBase.needs_openssl``): yes
        unless the sink knows better."""
        return True

    def setup_warnings(self, data_dir: Path) -> list[str]:
        """Settings that are valid but may not work out where they point (a file sink's
        ring larger than its disk): ``iotgw check`` prints them and the config stays
        valid, because the deployment may still change (a disk that grows)."""
        return []
