"""Real servers for the test suite: VictoriaMetrics, InfluxDB 1.x and Mosquitto.

Each server runs as a child process on free loopback ports, with its config, data and log
in a private temp dir, so tests exercise the same wire protocols the gateway meets in the
field and never touch a system service (e.g. the machine's mosquitto on 1883).

Only the standard library is used here, so a broken gateway dependency can never make the
harness itself lie about what the servers received.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

LOOPBACK = "127.0.0.1"

# urllib would otherwise honour http_proxy & co. and send loopback traffic elsewhere.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

_handed_out: set[int] = set()
_live: weakref.WeakSet[_Server] = weakref.WeakSet()


class ServerError(RuntimeError):
    """A test server failed to start, died, or answered an HTTP error."""


def free_port() -> int:
    """A loopback port the kernel just reported free, never the same one twice per process.

    There is an unavoidable race with other processes; servers retry their first start on
    fresh ports when the log says the address was taken.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise ServerError("no free loopback port found")


def _binary(*candidates: str) -> str:
    """Absolute path of the first installed candidate: fail loudly, never skip silently."""
    for candidate in candidates:
        if os.path.isabs(candidate) and os.access(candidate, os.X_OK):
            return candidate
        found = shutil.which(candidate)
        if found:
            return found
    raise ServerError(f"none of {candidates} is installed (run deploy/bootstrap.sh)")


def http_request(
    method: str,
    url: str,
    *,
    params: Mapping[str, str | Sequence[str]] | None = None,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """(status, body) of one request; HTTP error statuses are returned, not raised."""
    if params:
        url = f"{url}?{urllib.parse.urlencode(params, doseq=True)}"
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _ok(status: int, body: bytes, what: str) -> bytes:
    if status >= 300:
        raise ServerError(f"{what}: HTTP {status}: {body.decode(errors='replace')[:2000]}")
    return body


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


@atexit.register
def _kill_leftovers() -> None:
    """Last-resort cleanup so an aborted session does not leave servers behind."""
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.kill()


class _Server:
    """Lifecycle shared by all servers: spawn, poll until ready, stop, restart.

    Ports and data dir are fixed at construction, so stop() + start() brings the same
    server back on the same port with the same data, as a restarted real server would.
    """

    name = "server"
    ready_timeout = 30.0
    stop_timeout = 15.0

    def __init__(self, base_dir: str | os.PathLike[str], ports: Sequence[int | None]) -> None:
        base = Path(base_dir)
        base.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=base))
        self.log_path = self.dir / f"{self.name}.log"
        self._auto_ports = all(p is None for p in ports)
        self._ports = [p if p is not None else free_port() for p in ports]
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._log_offset = 0  # where the current run's output starts in the log
        self._ever_ready = False

    # --- subclass hooks -----------------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files; runs before every spawn so new ports are picked up."""

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _after_ready(self) -> None:
        """One-off setup that needs the server up (e.g. creating an admin user)."""

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> Self:
        """Spawn and wait until ready; raise with the log tail if it dies or stalls."""
        if self.running:
            return self
        deadline = time.monotonic() + self.ready_timeout
        while True:
            self._prepare()
            self._spawn()
            failure = self._wait_ready(deadline)
            if failure is None:
                break
            in_use = "address already in use" in self._run_log().lower()
            if in_use and time.monotonic() < deadline:
                if self._auto_ports and not self._ever_ready:
                    self._ports = [free_port() for _ in self._ports]
                else:  # restart on a fixed port: wait for the old socket to go away
                    time.sleep(0.1)
                continue
            raise ServerError(f"{self.name} {failure}\n--- {self.log_path} (tail) ---\n"
                              f"{self.log_tail()}")
        if not self._ever_ready:
            self._ever_ready = True
            self._after_ready()
        return self

    def _spawn(self) -> None:
        self._close_log()
        self._log_file = open(self.log_path, "ab")  # kept open: the child writes to it
        self._log_file.write(f"--- start {time.strftime('%H:%M:%S')} ---\n".encode())
        self._log_file.flush()
        self._log_offset = self._log_file.tell()
        self.proc = subprocess.Popen(
            self._command(),
            cwd=self.dir,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a ^C in pytest must not kill it before teardown
        )
        _live.add(self)

    def _wait_ready(self, deadline: float) -> str | None:
        """None when ready, else why not (the process is then gone)."""
        assert self.proc is not None
        while True:
            code = self.proc.poll()
            if code is not None:
                self._close_log()
                return f"exited with code {code} during startup: {self.log_tail(5)}"
            try:
                if self._is_ready():
                    return None
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                return f"not ready after {self.ready_timeout:.0f}s"
            time.sleep(0.02)

    def stop(self, timeout: float | None = None) -> int | None:
        """Graceful stop (SIGTERM, so data is flushed), SIGKILL if it hangs; exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)  # in case a test paused it
                self.proc.terminate()
            try:
                self.proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: simulate a crash (nothing flushed)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
        self._close_log()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung server)."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> Self:
        """Graceful stop then start on the same port(s) and data dir."""
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _run_log(self) -> str:
        """What the current (or last) process wrote, without earlier runs."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} ports={self._ports} {state} dir={self.dir}>"


# --- VictoriaMetrics -------------------------------------------------------------------


class VictoriaMetrics(_Server):
    """Single-node VictoriaMetrics, the gateway's usual ``influxdb`` sink target.

    Flags chosen for tests: dedup at 1ms so a replayed point collapses like in InfluxDB;
    100y retention so fixed historic timestamps are stored instead of silently dropped;
    no latency offset / rollup cache so fresh samples are queryable at once; a short
    graceful-shutdown so stop() does not wait 7s for idle keep-alive clients.
    """

    name = "victoria"

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        dedup_interval: str | None = "1ms",
        retention: str = "100y",
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(base_dir, [port])
        self.data_dir = self.dir / "data"
        self.dedup_interval = dedup_interval
        self.retention = retention
        self.extra_args = list(extra_args)

    @property
    def port(self) -> int:
        return self._ports[0]

    @property
    def url(self) -> str:
        """Base URL for influxdb-client (``/api/v2/write``) and the v1 ``/write``."""
        return f"http://{LOOPBACK}:{self.port}"

    def _command(self) -> list[str]:
        args = [
            _binary("victoria-metrics", "/usr/bin/victoria-metrics"),
            f"-storageDataPath={self.data_dir}",
            f"-httpListenAddr={LOOPBACK}:{self.port}",
            f"-retentionPeriod={self.retention}",
            "-loggerLevel=ERROR",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-http.maxGracefulShutdownDuration=1s",
        ]
        if self.dedup_interval:
            args.append(f"-dedup.minScrapeInterval={self.dedup_interval}")
        return args + self.extra_args

    def _is_ready(self) -> bool:
        status, body = http_request("GET", f"{self.url}/health", timeout=1.0)
        return status == 200 and body.strip() == b"OK"

    def get(self, path: str, **params: str | Sequence[str]) -> bytes:
        """GET any endpoint; raise ServerError on an HTTP error."""
        status, body = http_request("GET", f"{self.url}{path}", params=params)
        return _ok(status, body, f"GET {path}")

    def flush(self) -> None:
        """Make everything ingested so far searchable (it is buffered for up to ~10s)."""
        self.get("/internal/force_flush")

    def write_lines(self, lines: str | Iterable[str], precision: str = "ns") -> None:
        """Seed data through the v1 ``/write`` endpoint (line protocol)."""
        body = lines if isinstance(lines, str) else "\n".join(lines)
        status, text = http_request(
            "POST", f"{self.url}/write", params={"precision": precision}, data=body.encode()
        )
        _ok(status, text, "write")

    def export(
        self, match: str | Sequence[str] = '{__name__!=""}', *, start: float | None = None
    ) -> list[dict[str, Any]]:
        """Raw samples of every matching series: [{metric, values, timestamps}], sorted.

        Flushes first and passes an explicit ``end`` in the future: without it the export
        ends at VictoriaMetrics' coarse one-second clock, hiding samples for up to ~1s.
        """
        self.flush()
        params: dict[str, str | Sequence[str]] = {
            "match[]": [match] if isinstance(match, str) else list(match),
            "end": f"{time.time() + 7 * 86400:.3f}",
        }
        if start is not None:
            params["start"] = f"{start:.3f}"
        body = self.get("/api/v1/export", **params)
        rows = [json.loads(line) for line in body.splitlines() if line.strip()]
        return sorted(rows, key=lambda r: json.dumps(r["metric"], sort_keys=True))

    def samples(self, match: str | Sequence[str]) -> dict[tuple[str, ...], list[tuple[int, float]]]:
        """{(name, k=v, ...): [(ms_timestamp, value), ...]} for compact exact assertions."""
        out: dict[tuple[str, ...], list[tuple[int, float]]] = {}
        for row in self.export(match):
            metric = dict(row["metric"])
            key = (metric.pop("__name__"), *(f"{k}={v}" for k, v in sorted(metric.items())))
            pairs = zip(row["timestamps"], row["values"], strict=True)
            out.setdefault(key, []).extend(pairs)
        return {k: sorted(v) for k, v in out.items()}

    def query(self, promql: str, at: float | None = None) -> dict[str, Any]:
        """PromQL instant query; the whole JSON answer (``["data"]["result"]``).

        ``at`` defaults to two seconds from now, for the same clock reason as export().
        """
        self.flush()
        when = time.time() + 2.0 if at is None else at
        body = self.get("/api/v1/query", query=promql, time=f"{when:.3f}")
        answer: dict[str, Any] = json.loads(body)
        if answer.get("status") != "success":
            raise ServerError(f"query {promql!r}: {answer}")
        return answer

    def series_count(self, match: str | Sequence[str] = '{__name__!=""}') -> int:
        """How many distinct series match (one per measurement_field + label set)."""
        return len(self.export(match))

    def delete_series(self, match: str) -> None:
        """Drop matching series, e.g. to reuse the session instance with clean state."""
        self.get("/api/v1/admin/tsdb/delete_series", **{"match[]": match})


# --- InfluxDB 1.x ------------------------------------------------------------------------


class InfluxDB1(_Server):
    """InfluxDB 1.x (Debian 1.6.7), target of the gateway's ``influxdb1`` sink.

    Speaks only the v1 API (``/write``, ``/query``). With ``username`` set, HTTP auth is
    enabled and that user is created as admin right after the first start.
    """

    name = "influxdb1"

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        rpc_port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        extra_config: str = "",
    ) -> None:
        super().__init__(base_dir, [port, rpc_port])
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        self.username = username
        self.password = password
        self.extra_config = extra_config
        self.config_path = self.dir / "influxdb.conf"

    @property
    def port(self) -> int:
        return self._ports[0]

    @property
    def rpc_port(self) -> int:
        """The backup/restore RPC listener: it binds too, so it must be private as well."""
        return self._ports[1]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def auth_enabled(self) -> bool:
        return self.username is not None

    def _prepare(self) -> None:
        d = self.dir
        self.config_path.write_text(
            f"""\
reporting-disabled = true
reporting-enabled = false
bind-address = "{LOOPBACK}:{self.rpc_port}"

[meta]
  dir = "{d / 'meta'}"
  logging-enabled = false

[data]
  dir = "{d / 'data'}"
  wal-dir = "{d / 'wal'}"
  wal-fsync-delay = "0s"
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[http]
  enabled = true
  bind-address = "{LOOPBACK}:{self.port}"
  auth-enabled = {'true' if self.auth_enabled else 'false'}
  log-enabled = false
  pprof-enabled = false
  unix-socket-enabled = false

[logging]
  level = "warn"
  suppress-logo = true

{self.extra_config}
"""
        )

    def _env(self) -> dict[str, str]:
        # INFLUXDB_* variables override the config file; keep the instance hermetic.
        return {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}

    def _command(self) -> list[str]:
        return [_binary("influxd", "/usr/bin/influxd"), "-config", str(self.config_path)]

    def _is_ready(self) -> bool:
        status, _ = http_request("GET", f"{self.url}/ping", timeout=1.0)
        return status == 204

    def _after_ready(self) -> None:
        if self.auth_enabled:
            # Allowed without credentials only while no admin exists (first start).
            self.query(
                f"CREATE USER \"{self.username}\" WITH PASSWORD '{self.password}' "
                "WITH ALL PRIVILEGES",
                auth=False,
            )

    def _auth_headers(self, auth: bool) -> dict[str, str]:
        """Basic auth: 1.6 reads u/p from the URL or this header, never from a form body."""
        if auth and self.auth_enabled:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return {"Authorization": f"Basic {token}"}
        return {}

    def query(
        self, q: str, db: str | None = None, *, epoch: str | None = "ns", auth: bool = True
    ) -> dict[str, Any]:
        """InfluxQL via POST /query; parsed JSON. Times are integer ns unless epoch=None.

        HTTP errors raise ServerError; per-statement errors stay in ``results[i].error``.
        """
        params = {"q": q}
        if db is not None:
            params["db"] = db
        if epoch is not None:
            params["epoch"] = epoch
        status, body = http_request(
            "POST",
            f"{self.url}/query",
            data=urllib.parse.urlencode(params).encode(),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                **self._auth_headers(auth),
            },
        )
        result: dict[str, Any] = json.loads(_ok(status, body, f"query {q!r}"))
        return result

    def select(self, q: str, db: str) -> list[dict[str, Any]]:
        """Rows of the first statement as dicts (``time`` in ns); [] when nothing matched."""
        result = self.query(q, db)["results"][0]
        if "error" in result:
            raise ServerError(f"query {q!r}: {result['error']}")
        rows: list[dict[str, Any]] = []
        for series in result.get("series", []):
            tags = series.get("tags", {})
            for values in series["values"]:
                rows.append({**tags, **dict(zip(series["columns"], values, strict=True))})
        return rows

    def create_database(self, name: str) -> None:
        result = self.query(f'CREATE DATABASE "{name}"')["results"][0]
        if "error" in result:
            raise ServerError(f"create database {name}: {result['error']}")

    def write_lines(self, db: str, lines: str | Iterable[str], precision: str = "ns") -> None:
        """Seed data through ``/write`` (line protocol)."""
        body = lines if isinstance(lines, str) else "\n".join(lines)
        status, text = http_request(
            "POST",
            f"{self.url}/write",
            params={"db": db, "precision": precision},
            data=body.encode(),
            headers=self._auth_headers(True),
        )
        _ok(status, text, "write")


# --- TLS -------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        [_binary("openssl"), *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ServerError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


class TestCA:
    """A throwaway certificate authority (openssl CLI, EC P-256: fast to generate).

    ``cert_file`` is what clients pass as ``ca_certs``; issue() makes leaf certificates.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, base_dir: str | os.PathLike[str], name: str = "iotgw test CA") -> None:
        base = Path(base_dir)
        base.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="ca-", dir=base))
        self.name = name
        self.cert_file = self.dir / "ca.crt"
        self.key_file = self.dir / "ca.key"
        _openssl(
            "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "30", "-subj", f"/CN={name}",
            "-keyout", str(self.key_file), "-out", str(self.cert_file),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash",
            cwd=self.dir,
        )

    def issue(
        self,
        common_name: str,
        *,
        server: bool = False,
        sans: Sequence[str] = ("IP:127.0.0.1", "DNS:localhost"),
        days: int = 30,
    ) -> tuple[Path, Path]:
        """(cert_file, key_file) for a server (with SANs) or a client (clientAuth)."""
        stem = "".join(c if c.isalnum() else "_" for c in common_name)
        stem = f"{stem}-{secrets.token_hex(3)}"
        key, csr, cert = (self.dir / f"{stem}.{ext}" for ext in ("key", "csr", "crt"))
        ext_file = self.dir / f"{stem}.ext"
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}",
            "subjectKeyIdentifier=hash",
            "authorityKeyIdentifier=keyid",
        ]
        if server and sans:
            lines.append(f"subjectAltName={','.join(sans)}")
        ext_file.write_text("\n".join(lines) + "\n")
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", f"/CN={common_name}", "-keyout", str(key), "-out", str(csr),
            cwd=self.dir,
        )
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert_file),
            "-CAkey", str(self.key_file), "-set_serial", f"0x{secrets.token_hex(8)}",
            "-days", str(days), "-extfile", str(ext_file), "-out", str(cert),
            cwd=self.dir,
        )
        return cert, key


# --- Mosquitto -------------------------------------------------------------------------

DEFAULT_MQTT_USERS: dict[str, str] = {"gw": "gw-secret", "ops": "ops-secret"}

# gw: the gateway's own account. ops: an operator/monitoring account that may read
# everything but write only under ops/. Pattern lines apply to every user.
DEFAULT_MQTT_ACL = """\
pattern write x/%u/#

user gw
topic readwrite compound/#

user ops
topic read compound/#
topic read x/#
topic readwrite ops/#
"""


class Mosquitto(_Server):
    """Mosquitto 2.0 with password auth, an optional ACL and a TLS listener.

    ``port`` is plain MQTT, ``tls_port`` MQTT over TLS with a server cert for 127.0.0.1 and
    localhost signed by ``ca`` (clients verify with ``ca_file``). ``client_cert`` /
    ``client_key`` are signed by the same CA for mutual-TLS tests.
    """

    name = "mosquitto"
    host = LOOPBACK

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        users: Mapping[str, str] | None = None,
        acl: str | None = None,
        tls: bool = True,
        ca: TestCA | None = None,
        require_certificate: bool = False,
        use_identity_as_username: bool = False,
        persistence: bool = False,
        max_queued_messages: int = 100_000,
        allow_anonymous: bool = False,
        port: int | None = None,
        tls_port: int | None = None,
        extra_config: str = "",
    ) -> None:
        ports = [port, tls_port] if tls else [port]
        super().__init__(base_dir, ports)
        self.users = dict(DEFAULT_MQTT_USERS if users is None else users)
        self.acl = acl
        self.tls = tls
        self.require_certificate = require_certificate
        self.use_identity_as_username = use_identity_as_username
        self.persistence = persistence
        self.max_queued_messages = max_queued_messages
        self.allow_anonymous = allow_anonymous
        self.extra_config = extra_config
        self.config_path = self.dir / "mosquitto.conf"
        self.password_file = self.dir / "passwd"
        self.acl_file = self.dir / "acl"
        self.persistence_dir = self.dir / "persist"
        self.ca: TestCA | None = None
        self.server_cert: Path | None = None
        self.server_key: Path | None = None
        self.client_cert: Path | None = None
        self.client_key: Path | None = None
        if tls:
            self.ca = ca if ca is not None else TestCA(self.dir)
            self.server_cert, self.server_key = self.ca.issue("localhost", server=True)
            self.client_cert, self.client_key = self.ca.issue("gw")
        self._write_auth_files()

    @property
    def port(self) -> int:
        return self._ports[0]

    @property
    def tls_port(self) -> int:
        if not self.tls:
            raise ServerError("this Mosquitto has no TLS listener")
        return self._ports[1]

    @property
    def ca_file(self) -> Path:
        if self.ca is None:
            raise ServerError("this Mosquitto has no TLS listener")
        return self.ca.cert_file

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://{LOOPBACK}:{self.tls_port}"

    def _write_auth_files(self) -> None:
        passwd = _binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
        self.password_file.write_text("")
        for user, password in self.users.items():
            subprocess.run(
                [passwd, "-b", str(self.password_file), user, password],
                check=True, capture_output=True,
            )
        if self.acl is not None:
            self.acl_file.write_text(self.acl)

    def _prepare(self) -> None:
        user = pwd.getpwuid(os.getuid()).pw_name
        lines = [
            # As root, mosquitto drops to user "mosquitto", which cannot read our temp dir.
            f"user {user}",
            "per_listener_settings false",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"password_file {self.password_file}",
            f"max_queued_messages {self.max_queued_messages}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",  # connects/disconnects; not per-message debug
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
        ]
        if self.acl is not None:
            lines.append(f"acl_file {self.acl_file}")
        if self.persistence:
            self.persistence_dir.mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {self.persistence_dir}/"]
        else:
            lines.append("persistence false")
        lines += ["", f"listener {self.port} {LOOPBACK}"]
        if self.tls:
            assert self.ca is not None
            lines += [
                "",
                f"listener {self.tls_port} {LOOPBACK}",
                f"cafile {self.ca.cert_file}",
                f"certfile {self.server_cert}",
                f"keyfile {self.server_key}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
            if self.use_identity_as_username:
                lines.append("use_identity_as_username true")
        self.config_path.write_text("\n".join([*lines, "", self.extra_config, ""]))

    def _command(self) -> list[str]:
        return [_binary("mosquitto", "/usr/sbin/mosquitto"), "-c", str(self.config_path)]

    def _is_ready(self) -> bool:
        return all(_port_open(p) for p in self._ports)
