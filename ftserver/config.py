"""Server configuration: every key, its type, default and meaning, in one place.

Each setting is one field of a frozen dataclass below, declared as
``field(default=…, metadata=_spec(kind, doc, …))``: its default, its kind (how it is parsed
and checked) and a one-line description live together (STYLE.md habit 12: every limit a
named default in one module). :func:`describe` derives the documentation table from these
declarations, and a test checks that ``docs/configuration.md`` lists exactly these keys with
these types and defaults.

Configuration comes from a TOML file (tables ``[server]``, ``[mqtt]``, ``[http]``,
``[limits]``, ``[transfer]``, ``[storage]``, ``[security]``, ``[export]``, ``[relay]``,
``[notify]``) and from overrides keyed by the
dotted name (``{"limits.max_file_size": "1GiB"}``), applied after the file. Unknown keys and
bad values raise :class:`ConfigError` naming the full key.

Value syntax:

- **size**: an integer (bytes) or a string ``<digits>[ ]<unit>``, unit one of ``B``, ``KB``,
  ``MB``, ``GB``, ``TB`` (powers of 1000) or ``KiB``, ``MiB``, ``GiB``, ``TiB`` (powers of
  1024), case-insensitive: ``"16MiB"``, ``"10MB"``.
- **duration**: an integer (seconds) or a string ``<digits>[ ]<unit>``, unit one of ``ms``,
  ``s``, ``m``, ``h``, ``d`` (``"500ms"``, ``"5m"``, ``"1d"``), or digits alone (seconds).
  Kind ``seconds`` is a duration that must be a whole number of seconds (MQTT carries those).
- **int**: an integer; **bool**: ``true`` or ``false``; **str**/**choice**/**path**/
  **host:port**: a string. In overrides (text from a command line) integers may also be
  given as strings of digits and booleans as ``true``/``false``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import ssl
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ftserver.mqtt.spec import MAX_PACKET_SIZE, MAX_U16, MAX_U32

__all__ = [
    "Config",
    "ConfigError",
    "ExportConfig",
    "HostPort",
    "HttpConfig",
    "KeyDoc",
    "LimitsConfig",
    "MqttConfig",
    "NotifyConfig",
    "RelayConfig",
    "ServerConfig",
    "StorageConfig",
    "TransferConfig",
    "describe",
    "format_duration",
    "format_size",
    "host_port",
    "is_loopback_host",
    "load_config",
    "parse_duration",
    "parse_size",
    "parse_upstream",
    "relay_tls_context",
    "webhook_url",
]

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

#: largest file size a configuration may allow (offsets are signed 64-bit on disk)
MAX_FILE_SIZE_CAP: Final = 2**63 - 1


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the full key."""


# --------------------------------------------------------------------------------------------
# host:port


@dataclass(frozen=True, slots=True)
class HostPort:
    """A listen address: ``host`` (a name, IPv4 or IPv6 address, without brackets) and port.

    Port 0 asks the OS for a free port (tests use it).
    """

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def host_port(s: str) -> HostPort:
    """Parse ``"HOST:PORT"`` or ``"[IPV6]:PORT"`` into a :class:`HostPort`.

    HOST is a hostname (RFC 1123 labels), an IPv4 address, or an IPv6 address in brackets
    (``"[::1]:1883"``, ``"[::]:1883"`` for every interface); PORT is 0–65535 in ASCII digits.
    An empty host is refused: write ``0.0.0.0`` or ``[::]`` to listen everywhere. Raises
    ``ValueError`` with the reason.
    """
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or s[end + 1 : end + 2] != ":":
            raise ValueError(f"expected '[IPV6]:PORT', got {s!r}")
        host, port_text = s[1:end], s[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not an IPv6 address: {host!r}") from None
    else:
        host, sep, port_text = s.rpartition(":")
        if not sep:
            raise ValueError(f"expected 'HOST:PORT', got {s!r}")
        if ":" in host:
            raise ValueError(f"an IPv6 address needs brackets, as in '[::1]:1883'; got {s!r}")
        if not host:
            raise ValueError(f"missing host (use 0.0.0.0 or [::] for all interfaces): {s!r}")
        if not _valid_host(host):
            raise ValueError(f"not a hostname or IPv4 address: {host!r}")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"expected a port 0-65535, got {port_text!r}")
    return HostPort(host, int(port_text))


def _valid_host(host: str) -> bool:
    if host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    if len(host) > 253:
        return False
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return all(label.isascii() and _HOSTNAME_LABEL.match(label) for label in labels)


# --------------------------------------------------------------------------------------------
# sizes and durations

_SIZE_UNITS: Final = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": 1024 * GiB,
}
_SIZE_RE = re.compile(r"\s*([0-9]{1,30})\s?([A-Za-z]*)\s*\Z", re.ASCII)

_DURATION_UNITS_MS: Final = {
    "": 1000,
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
}
_DURATION_RE = re.compile(r"\s*([0-9]{1,30})\s?([a-z]*)\s*\Z", re.ASCII)


def parse_size(value: object) -> int:
    """A size in bytes from an int or a string like ``"16MiB"`` (see the module docstring)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = _SIZE_UNITS.get(m.group(2).lower())
            if unit is not None:
                return int(m.group(1)) * unit
    raise ValueError(f"expected a size like '16MiB', got {value!r}")


def parse_duration(value: object) -> float:
    """A duration in seconds from an int (seconds) or a string like ``"500ms"`` or ``"5m"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            unit = _DURATION_UNITS_MS.get(m.group(2))
            if unit is not None:
                return int(m.group(1)) * unit / 1000
    raise ValueError(f"expected a duration like '5s' or '500ms', got {value!r}")


def format_size(n: int) -> str:
    """The shortest exact rendering of a size: ``16777216`` → ``"16MiB"``."""
    for unit, factor in (("TiB", 1024 * GiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


def format_duration(seconds: float) -> str:
    """The shortest exact rendering of a duration: ``300.0`` → ``"5m"``, ``0.5`` → ``"500ms"``."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    for unit, factor in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % factor == 0:
            return f"{ms // factor}{unit}"
    return f"{ms}ms"


# --------------------------------------------------------------------------------------------
# key declarations


@dataclass(frozen=True, slots=True)
class _Spec:
    """How one key is parsed, bounded and documented."""

    kind: str
    doc: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()


def _spec(
    kind: str,
    doc: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] = (),
) -> dict[str, _Spec]:
    """The metadata of a configuration key's dataclass field: its kind, doc and bounds."""
    return {"spec": _Spec(kind, doc, lo, hi, choices)}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: process-wide settings."""

    data_dir: Path = field(
        default=Path("ftdata"),
        metadata=_spec(
            "path",
            "Directory for staging and local exports; a relative path is relative to the "
            "working directory.",
        ),
    )
    workers: int = field(
        default=0,
        metadata=_spec(
            "int", "Number of worker processes; 0 means one per CPU core.", lo=0, hi=1024
        ),
    )
    log_level: str = field(
        default="info",
        metadata=_spec(
            "choice",
            "Least severe log level written.",
            choices=("debug", "info", "warning", "error", "critical"),
        ),
    )
    log_format: str = field(
        default="text",
        metadata=_spec(
            "choice",
            "Format of the log lines on standard error: text, for people, or json, one object "
            "per line, for machines (docs/operations.md, Logs).",
            choices=("text", "json"),
        ),
    )
    node: str = field(
        default="",
        metadata=_spec(
            "str",
            "This node's name in a cluster (S3 transfer checkpoints name their owner); empty: "
            "the host name.",
        ),
    )

    @property
    def node_name(self) -> str:
        """``node``, or the host name when it is empty."""
        return self.node or socket.gethostname()

    @property
    def worker_count(self) -> int:
        """The number of workers to start: ``workers``, or the CPU count when it is 0."""
        return self.workers or os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """``[mqtt]``: the MQTT listener and the session parameters ftserver announces."""

    listen: HostPort = field(
        default=HostPort("127.0.0.1", 1883),
        metadata=_spec("host:port", "Address of the MQTT listener (TCP)."),
    )
    keepalive_max: int = field(
        default=0,
        metadata=_spec(
            "seconds",
            "Largest keep-alive allowed; MQTT 5 clients asking more, or 0, get this as Server "
            "Keep Alive (MQTT 3.1.1 clients keep theirs); 0 disables the cap.",
            lo=0,
            hi=MAX_U16,
        ),
    )
    receive_maximum: int = field(
        default=64,
        metadata=_spec(
            "int",
            "Receive Maximum announced to MQTT 5 clients: unacknowledged QoS 1/2 commands "
            "a client may have in flight.",
            lo=1,
            hi=MAX_U16,
        ),
    )
    topic_alias_maximum: int = field(
        default=16,
        metadata=_spec(
            "int",
            "Topic Alias Maximum announced to MQTT 5 clients; 0 disables topic aliases.",
            lo=0,
            hi=MAX_U16,
        ),
    )
    session_expiry_max: int = field(
        default=7200,
        metadata=_spec(
            "seconds",
            "Longest session expiry interval granted; a client asking more gets this.",
            lo=0,
            hi=MAX_U32,
        ),
    )
    connect_timeout: float = field(
        default=10.0,
        metadata=_spec(
            "duration",
            "Time a new connection has to send its CONNECT before it is closed.",
            lo=0.001,
        ),
    )

    tls_listen: str = field(
        default="",
        metadata=_spec("str", "Address of an MQTT-over-TLS listener (HOST:PORT); empty: none."),
    )
    tls_cert: str = field(
        default="",
        metadata=_spec("str", "Certificate chain (PEM file) of the TLS listener."),
    )
    tls_key: str = field(
        default="",
        metadata=_spec("str", "Private key (PEM file) of the TLS listener."),
    )
    tls_ca: str = field(
        default="",
        metadata=_spec("str", "CA certificates (PEM file) that client certificates must chain to."),
    )
    tls_client_cert: str = field(
        default="none",
        metadata=_spec(
            "choice",
            "Client certificates on the TLS listener: none, optional or required.",
            choices=("none", "optional", "required"),
        ),
    )
    tls_identity: str = field(
        default="none",
        metadata=_spec(
            "choice",
            "Use a client certificate's CN as the user name or the client id (none: neither).",
            choices=("none", "username", "clientid"),
        ),
    )


#: shortest bearer token accepted for ``http.token``
MIN_TOKEN_LENGTH: Final = 16


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """``[http]``: the HTTP API and metrics listener."""

    listen: HostPort = field(
        default=HostPort("127.0.0.1", 18083),
        metadata=_spec("host:port", "Address of the HTTP API and /metrics."),
    )
    token: str = field(
        default="",
        repr=False,  # a secret: never in a logged or printed Config
        metadata=_spec(
            "str",
            "Bearer token every /api/v5 request must carry; empty means no authentication.",
        ),
    )
    allow_anonymous: bool = field(
        default=False,
        metadata=_spec(
            "bool",
            "Serve the API without a token on a non-loopback http.listen address.",
        ),
    )


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``[limits]``: sizes and counts that bound what one client can make ftserver hold."""

    max_packet_size: int = field(
        default=16 * MiB,
        metadata=_spec(
            "size",
            "Largest MQTT packet accepted (announced as Maximum Packet Size); bounds a segment.",
            lo=1 * KiB,
            hi=MAX_PACKET_SIZE,
        ),
    )
    max_file_size: int = field(
        default=64 * GiB,
        metadata=_spec(
            "size",
            "Largest file a transfer may produce; beyond it commands fail with file_too_large.",
            lo=1,
            hi=MAX_FILE_SIZE_CAP,
        ),
    )
    max_inflight_responses: int = field(
        default=32,
        metadata=_spec(
            "int",
            "Response documents sent at QoS 1 to one client and not yet acknowledged; more wait.",
            lo=1,
            hi=MAX_U16,
        ),
    )
    max_connections: int = field(
        default=100_000,
        metadata=_spec(
            "int",
            "Connections open at once (shared out over the workers); more are answered busy.",
            lo=0,
        ),
    )
    partial_packet_budget: int = field(
        default=256 * MiB,
        metadata=_spec(
            "size",
            "Memory for packets not yet complete (shared out over the workers); beyond it the "
            "largest holders stop being read until it frees.",
            lo=0,
        ),
    )
    max_connections_per_ip: int = field(
        default=20_000,
        metadata=_spec(
            "int",
            "Connections open at once from one source address (0: no limit).",
            lo=0,
        ),
    )
    max_transfers_per_client: int = field(
        default=64,
        metadata=_spec(
            "int",
            "Unfinished transfers one client may have; a new one beyond gets too_many_transfers.",
            lo=0,
        ),
    )
    client_byte_rate: int = field(
        default=0,
        metadata=_spec(
            "size",
            "Segment bytes per second one client may send (0: no limit); faster gets "
            "quota_exceeded (0x97, pause).",
            lo=0,
        ),
    )
    staging_low_water: int = field(
        default=256 * MiB,
        metadata=_spec(
            "size",
            "Free space under which new segment data gets storage_full (0x97); fins still run.",
            lo=0,
        ),
    )


@dataclass(frozen=True, slots=True)
class TransferConfig:
    """``[transfer]``: the lifecycle of transfers (PROTOCOL.md §5)."""

    assemble_timeout: float = field(
        default=300.0,
        metadata=_spec(
            "duration",
            "Longest time a synchronous fin waits for its export before it answers timeout.",
            lo=0.001,
        ),
    )
    segments_ttl_min: int = field(
        default=300,
        metadata=_spec(
            "seconds",
            "Lower clamp of a transfer's segments_ttl: an unfinished transfer is kept this long.",
            lo=1,
        ),
    )
    segments_ttl_max: int = field(
        default=86_400,
        metadata=_spec(
            "seconds",
            "Upper clamp of segments_ttl, and the TTL of a transfer that gives none.",
            lo=1,
        ),
    )
    segments_gc_interval: float = field(
        default=3600.0,
        metadata=_spec(
            "duration",
            "How often expired unfinished transfers and exports are collected.",
            lo=0.001,
        ),
    )


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """``[storage]``: how staging data reaches the disk."""

    durability: str = field(
        default="fast",
        metadata=_spec(
            "choice",
            "fast: no flush per segment, verified on recovery; sync: flush before acknowledging.",
            choices=("fast", "sync"),
        ),
    )


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """``[security]``: who may connect."""

    password_file: str = field(
        default="",
        metadata=_spec(
            "str",
            "Password file of MQTT users (argon2id hashes; managed with `ftserver passwd`).",
        ),
    )
    allow_anonymous: bool = field(
        default=False,
        metadata=_spec(
            "bool",
            "Accept clients without credentials on a non-loopback MQTT listener.",
        ),
    )
    acl_file: str = field(
        default="",
        metadata=_spec(
            "str",
            "ACL rules (TOML): extra response topics per user/client pattern, upload on/off.",
        ),
    )


#: canned ACLs S3 accepts on upload (``export.acl``); ``none`` sends no ACL header
S3_ACLS: Final = (
    "none",
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
)
#: S3's smallest part (all but the last) and largest part or single PUT
S3_MIN_PART: Final = 5 * MiB
S3_MAX_PART: Final = 5 * GiB
#: longest validity of a SigV4 presigned URL (7 days)
S3_MAX_PRESIGN: Final = 7 * 86_400


@dataclass(frozen=True, slots=True)
class ExportConfig:
    """``[export]``: where finished files go (the ``s3`` keys matter only with kind = s3)."""

    kind: str = field(
        default="local",
        metadata=_spec(
            "choice",
            "Exporter: local writes <data_dir>/exports in EMQX's layout; s3 uploads to a bucket.",
            choices=("local", "s3"),
        ),
    )
    endpoint: str = field(
        default="",
        metadata=_spec(
            "str",
            "S3 endpoint URL (http:// or https://, e.g. MinIO's); empty: AWS S3 of the region.",
        ),
    )
    region: str = field(
        default="",
        metadata=_spec(
            "str",
            "S3 region (also the SigV4 signing region); empty: AWS_REGION or the AWS config "
            "file, else us-east-1.",
        ),
    )
    bucket: str = field(
        default="",
        metadata=_spec("str", "S3 bucket the exports go to (required with kind = s3)."),
    )
    access_key_id: str = field(
        default="",
        metadata=_spec(
            "str",
            "S3 access key id; empty: the AWS credential chain (AWS_ACCESS_KEY_ID, "
            "AWS_PROFILE, ~/.aws/credentials, instance roles).",
        ),
    )
    # repr=False: the secret never shows in a repr of the configuration (logs, tracebacks)
    secret_access_key: str = field(
        default="",
        repr=False,
        metadata=_spec(
            "str",
            "S3 secret access key, with access_key_id; never logged (prefer the TOML file or "
            "AWS_SECRET_ACCESS_KEY to a command line).",
        ),
    )
    addressing_style: str = field(
        default="auto",
        metadata=_spec(
            "choice",
            "Bucket addressing: path (endpoint/bucket/key, MinIO and most S3-compatibles), "
            "virtual (bucket.endpoint/key) or auto.",
            choices=("auto", "path", "virtual"),
        ),
    )
    acl: str = field(
        default="none",
        metadata=_spec(
            "choice",
            "Canned ACL set on each uploaded object; none sends no ACL (the bucket's default).",
            choices=S3_ACLS,
        ),
    )
    part_size: int = field(
        default=16 * MiB,
        metadata=_spec(
            "size",
            "Multipart part size; files up to this size go in one PUT (raised for files over "
            "10000 parts).",
            lo=S3_MIN_PART,
            hi=S3_MAX_PART,
        ),
    )
    upload_concurrency: int = field(
        default=4,
        metadata=_spec(
            "int",
            "Parts uploaded at once per worker process (each holds one part in memory).",
            lo=1,
            hi=64,
        ),
    )
    request_timeout: float = field(
        default=60.0,
        metadata=_spec(
            "duration",
            "Connect and read timeout of each S3 request.",
            lo=0.001,
        ),
    )
    retries: int = field(
        default=3,
        metadata=_spec(
            "int",
            "Retries of a failed S3 request (throttling, 5xx, network errors) before it fails.",
            lo=0,
            hi=20,
        ),
    )
    tls_verify: bool = field(
        default=True,
        metadata=_spec("bool", "Verify the S3 endpoint's TLS certificate."),
    )
    ca_file: str = field(
        default="",
        metadata=_spec(
            "str",
            "CA bundle (PEM file) to verify the S3 endpoint with; empty: the system's.",
        ),
    )
    presign_expiry: int = field(
        default=3600,
        metadata=_spec(
            "seconds",
            "Validity of the presigned download URLs the HTTP API lists for S3 exports.",
            lo=1,
            hi=S3_MAX_PRESIGN,
        ),
    )
    checkpoint_prefix: str = field(
        default=".ftserver/transfers/",
        metadata=_spec(
            "str",
            "Key prefix in the bucket of the transfers' checkpoints (state of the streamed "
            "multipart uploads) and expiry markers; ends with /, never listed as exports.",
        ),
    )


#: schemes of ``relay.upstream`` and their default ports
RELAY_SCHEMES: Final = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """``[relay]``: relay mode, ftserver in front of the user's MQTT broker (docs/relay.md)."""

    upstream: str = field(
        default="",
        metadata=_spec(
            "str",
            "The broker everything outside file transfer is passed to: mqtt://host:port or "
            "mqtts://host:port (TLS). Empty: standalone mode, nothing is relayed.",
        ),
    )
    credentials: str = field(
        default="passthrough",
        metadata=_spec(
            "choice",
            "User name and password on each device's upstream connection: passthrough (the "
            "device's own, the broker decides) or fixed (relay.username and relay.password).",
            choices=("passthrough", "fixed"),
        ),
    )
    username: str = field(
        default="",
        metadata=_spec("str", 'User name sent upstream with credentials = "fixed".'),
    )
    password: str = field(
        default="",
        repr=False,
        metadata=_spec("str", 'Password sent upstream with credentials = "fixed".'),
    )
    connect_timeout: float = field(
        default=10.0,
        metadata=_spec(
            "duration",
            "How long the broker has to answer an upstream CONNECT; the device then gets "
            "Server unavailable (0x88; MQTT 3.1.1: return code 3).",
            lo=0.1,
            hi=300,
        ),
    )
    keepalive: int = field(
        default=60,
        metadata=_spec(
            "seconds",
            "Keep Alive of the upstream connections (ftserver pings the broker itself).",
            lo=5,
            hi=MAX_U16,
        ),
    )
    ca_file: str = field(
        default="",
        metadata=_spec(
            "str",
            "CA bundle to verify an mqtts:// broker with (empty: the system's trust store).",
        ),
    )
    cert_file: str = field(
        default="",
        metadata=_spec("str", "Client certificate presented to an mqtts:// broker (PEM)."),
    )
    key_file: str = field(
        default="",
        metadata=_spec("str", "Private key of relay.cert_file (PEM)."),
    )
    server_name: str = field(
        default="",
        metadata=_spec(
            "str",
            "Name the broker's certificate must carry (empty: the host of relay.upstream).",
        ),
    )
    events_topic: str = field(
        default="",
        metadata=_spec(
            "str",
            "Publish one JSON event per finished transfer to {events_topic}/{clientId}/{fileId} "
            "on the broker (QoS 1, kept on disk until the broker has it). Empty: none.",
        ),
    )

    @property
    def enabled(self) -> bool:
        return bool(self.upstream)

    @property
    def address(self) -> tuple[str, int, bool]:
        """(host, port, tls) of ``upstream`` (checked at load time)."""
        return parse_upstream(self.upstream)


class _NamedContext(ssl.SSLContext):
    """A client TLS context that checks the broker's certificate for ``relay.server_name``
    instead of the host it connects to (paho passes the host to ``wrap_socket``)."""

    server_name = ""

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["server_hostname"] = self.server_name
        return super().wrap_socket(sock, *args, **kwargs)


def relay_tls_context(relay: RelayConfig) -> ssl.SSLContext:
    """The client TLS context of an ``mqtts://`` upstream, for the relay's legs and the events
    connection alike: TLS 1.2 at least, the system's trust store or ``relay.ca_file``, the
    client certificate if given, the name ``relay.server_name``."""
    ctx: ssl.SSLContext
    if relay.server_name:
        ctx = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.server_name = relay.server_name
        if relay.ca_file:
            ctx.load_verify_locations(relay.ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx = ssl.create_default_context(cafile=relay.ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if relay.cert_file:
        ctx.load_cert_chain(relay.cert_file, relay.key_file)
    return ctx


def parse_upstream(url: str) -> tuple[str, int, bool]:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` as (host, port, tls)."""
    m = re.match(r"(mqtts?)://(\[[0-9A-Fa-f:.]+\]|[^:/\s\[\]]+)(?::(\d{1,5}))?/?\Z", url, re.ASCII)
    if m is None:
        raise ValueError(f"expected mqtt://host:port or mqtts://host:port, got {url!r}")
    scheme, host, port = m.groups()
    number = int(port) if port else RELAY_SCHEMES[scheme]
    if not 0 < number <= MAX_U16:
        raise ValueError(f"port {number} out of range in {url!r}")
    return host.strip("[]"), number, scheme == "mqtts"


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """``[notify]``: completion notifications (docs/events.md): the webhook, and the on-disk
    outbox that both it and the relay's events (``relay.events_topic``) are delivered from."""

    url: str = field(
        default="",
        metadata=_spec(
            "str",
            "Webhook: POST one JSON document per exported or failed file to this http:// or "
            "https:// URL. Empty: no webhook.",
        ),
    )
    secret: str = field(
        default="",
        repr=False,  # a secret: never in a logged or printed Config
        metadata=_spec(
            "str",
            "Key of the HMAC-SHA256 signature of each webhook body (header "
            "X-Ftserver-Signature); required with notify.url; never logged.",
        ),
    )
    timeout: float = field(
        default=10.0,
        metadata=_spec(
            "duration",
            "How long one webhook delivery (connect, send, answer) may take before it counts "
            "as failed and is retried.",
            lo=0.1,
            hi=600,
        ),
    )
    max_pending: int = field(
        default=100_000,
        metadata=_spec(
            "int",
            "Events kept on disk per sink and worker until delivered; beyond it the oldest is "
            "dropped (logged, ftserver_notify_dropped_total).",
            lo=1,
            hi=10_000_000,
        ),
    )
    retry_max: float = field(
        default=60.0,
        metadata=_spec(
            "duration",
            "Longest wait between two delivery attempts of a sink (exponential backoff with "
            "jitter from 200ms up to this).",
            lo=0.2,
            hi=3600,
        ),
    )


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration: one frozen dataclass per TOML table.

    Build it with :func:`load_config`; ``Config()`` gives the defaults and
    ``dataclasses.replace`` derives variants (in tests, say).
    """

    server: ServerConfig = field(default_factory=ServerConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)

    @staticmethod
    def describe() -> list[KeyDoc]:
        """Same as the module-level :func:`describe`."""
        return describe()


#: table name -> dataclass of that table, in declaration order
_GROUPS: Final[dict[str, type[Any]]] = {
    f.name: type(getattr(Config(), f.name)) for f in dataclasses.fields(Config)
}


# --------------------------------------------------------------------------------------------
# documentation


@dataclass(frozen=True, slots=True)
class KeyDoc:
    """One documented key: dotted name, kind, default as TOML text, one-line meaning, and
    the allowed values of a ``choice``."""

    key: str
    kind: str
    default: str
    doc: str
    choices: tuple[str, ...] = ()


def _render_default(kind: str, value: Any) -> str:
    if kind == "size":
        return f'"{format_size(value)}"'
    if kind in ("duration", "seconds"):
        return f'"{format_duration(value)}"'
    if kind == "int":
        return str(value)
    if kind == "bool":
        return "true" if value else "false"
    return f'"{value}"'


def describe() -> list[KeyDoc]:
    """Every configuration key in declaration order, for documentation and its test."""
    out: list[KeyDoc] = []
    for group, cls in _GROUPS.items():
        for f in dataclasses.fields(cls):
            spec: _Spec = f.metadata["spec"]
            out.append(
                KeyDoc(
                    key=f"{group}.{f.name}",
                    kind=spec.kind,
                    default=_render_default(spec.kind, f.default),
                    doc=spec.doc,
                    choices=spec.choices,
                )
            )
    return out


# --------------------------------------------------------------------------------------------
# loading


def _bounded(number: float, spec: _Spec) -> None:
    if spec.lo is not None and number < spec.lo:
        raise ValueError(f"must be at least {_num(spec, spec.lo)}, got {_num(spec, number)}")
    if spec.hi is not None and number > spec.hi:
        raise ValueError(f"must be at most {_num(spec, spec.hi)}, got {_num(spec, number)}")


def _num(spec: _Spec, number: float) -> str:
    if spec.kind == "size":
        return format_size(int(number))
    if spec.kind in ("duration", "seconds"):
        return format_duration(number)
    return str(int(number))


def _parse_int(value: object, from_text: bool) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if from_text and isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise ValueError(f"expected an integer, got {value!r}")


def _parse_seconds(value: object) -> int:
    seconds = parse_duration(value)
    if seconds != int(seconds):
        raise ValueError(f"expected a whole number of seconds, got {value!r}")
    return int(seconds)


def _parse_bool(value: object, from_text: bool) -> bool:
    if isinstance(value, bool):
        return value
    if from_text and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"expected true or false, got {value!r}")


def _parse_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _parse_path(value: object) -> Path:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ValueError(f"expected a non-empty path string, got {value!r}")
    return Path(value)


def _parse_host_port(value: object) -> HostPort:
    if isinstance(value, HostPort):
        return value
    return host_port(_parse_str(value))


def _parse_choice(value: object, spec: _Spec, key: str) -> str:
    text = _parse_str(value).strip().lower()
    if text not in spec.choices:
        allowed = ", ".join(repr(c) for c in spec.choices)
        raise ValueError(f"expected one of {allowed}, got {value!r}")
    return text


def _parse_value(key: str, spec: _Spec, value: object, from_text: bool) -> Any:
    """Parse and bound one value; raise :class:`ConfigError` naming ``key``."""
    try:
        result: Any
        if spec.kind == "size":
            result = parse_size(value)
            _bounded(result, spec)
        elif spec.kind == "duration":
            result = parse_duration(value)
            _bounded(result, spec)
        elif spec.kind == "seconds":
            result = _parse_seconds(value)
            _bounded(result, spec)
        elif spec.kind == "int":
            result = _parse_int(value, from_text)
            _bounded(result, spec)
        elif spec.kind == "bool":
            result = _parse_bool(value, from_text)
        elif spec.kind == "str":
            result = _parse_str(value)
        elif spec.kind == "choice":
            result = _parse_choice(value, spec, key)
        elif spec.kind == "path":
            result = _parse_path(value)
        elif spec.kind == "host:port":
            result = _parse_host_port(value)
        else:  # pragma: no cover - a declaration error, caught by the tests
            raise AssertionError(f"unknown kind {spec.kind!r}")
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return result


def _apply(groups: dict[str, dict[str, Any]], key: str, value: object, *, from_text: bool) -> None:
    group, _, name = key.partition(".")
    cls = _GROUPS.get(group)
    fields_by_name = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
    f = fields_by_name.get(name)
    if f is None:
        raise ConfigError(f"{key}: unknown key")
    groups[group][name] = _parse_value(key, f.metadata["spec"], value, from_text)


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def load_config(path: Path | None, overrides: Mapping[str, object] | None = None) -> Config:
    """Build the configuration: defaults, then the TOML file at ``path`` (if any), then
    ``overrides`` (dotted keys such as ``"limits.max_file_size"``).

    Raises :class:`ConfigError` for an unreadable file, invalid TOML, an unknown table or
    key, a value of the wrong type or out of range, or inconsistent values
    (``segments_ttl_min`` above ``segments_ttl_max``; an HTTP API on a non-loopback address
    with neither ``http.token`` nor ``http.allow_anonymous``).
    """
    groups: dict[str, dict[str, Any]] = {name: {} for name in _GROUPS}
    if path is not None:
        data = _from_toml(path)
        for group, table in data.items():
            if group not in _GROUPS:
                raise ConfigError(f"{group}: unknown table")
            if not isinstance(table, dict):
                raise ConfigError(f"{group}: expected a table [{group}], got {table!r}")
            for name, value in table.items():
                _apply(groups, f"{group}.{name}", value, from_text=False)
    for key, value in (overrides or {}).items():
        _apply(groups, key, value, from_text=True)
    config = Config(**{name: cls(**groups[name]) for name, cls in _GROUPS.items()})
    _check_consistency(config)
    return config


def _check_consistency(config: Config) -> None:
    t = config.transfer
    if t.segments_ttl_min > t.segments_ttl_max:
        raise ConfigError(
            "transfer.segments_ttl_min: must not exceed transfer.segments_ttl_max "
            f"({format_duration(t.segments_ttl_min)} > {format_duration(t.segments_ttl_max)})"
        )
    _check_http(config.http)
    _check_mqtt_security(config)
    _check_export(config.export)
    _check_relay(config.relay)
    _check_notify(config.notify)


def _check_export(export: ExportConfig) -> None:
    """The S3 exporter's keys, when it is chosen (they are ignored otherwise)."""
    if export.kind != "s3":
        return
    if not export.bucket:
        raise ConfigError('export.bucket: required with export.kind = "s3"')
    endpoint = export.endpoint
    if endpoint and not re.match(r"https?://[^/\s]+/?\Z", endpoint, re.ASCII):
        raise ConfigError(
            f"export.endpoint: expected a URL like 'https://s3.example.com:9000', got {endpoint!r}"
        )
    if bool(export.access_key_id) != bool(export.secret_access_key):
        raise ConfigError(
            "export.access_key_id: give both access_key_id and secret_access_key, or "
            "neither (then the AWS credential chain is used)"
        )
    if export.ca_file and not Path(export.ca_file).is_file():
        raise ConfigError(f"export.ca_file: no such file {export.ca_file!r}")
    prefix = export.checkpoint_prefix
    if not prefix.endswith("/") or prefix.startswith("/") or "//" in prefix:
        raise ConfigError(
            "export.checkpoint_prefix: expected a key prefix like '.ftserver/transfers/' "
            f"(not empty, ends with one /), got {prefix!r}"
        )


def _check_relay(relay: RelayConfig) -> None:
    """Relay mode's keys, when an upstream broker is given (they are ignored otherwise)."""
    if not relay.upstream:
        if relay.events_topic:
            raise ConfigError("relay.events_topic: needs relay.upstream (the broker to publish to)")
        return
    try:
        _host, _port, tls = parse_upstream(relay.upstream)
    except ValueError as exc:
        raise ConfigError(f"relay.upstream: {exc}") from None
    if relay.credentials == "fixed" and not relay.username:
        raise ConfigError('relay.username: required with relay.credentials = "fixed"')
    if relay.credentials != "fixed" and (relay.username or relay.password):
        raise ConfigError(
            'relay.username: used only with relay.credentials = "fixed" (passthrough sends '
            "each device's own)"
        )
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(relay, key)
        if path and not tls:
            raise ConfigError(f"relay.{key}: needs an mqtts:// relay.upstream")
        if path and not Path(path).is_file():
            raise ConfigError(f"relay.{key}: no such file {path!r}")
    if bool(relay.cert_file) != bool(relay.key_file):
        raise ConfigError("relay.cert_file: give both cert_file and key_file, or neither")
    topic = relay.events_topic
    if topic and (topic.startswith("$") or any(c in topic for c in "+#\0") or topic.endswith("/")):
        raise ConfigError(
            f"relay.events_topic: expected a topic prefix without wildcards, a leading $ "
            f"or a trailing /, got {topic!r}"
        )


def webhook_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a webhook URL: ``http://`` or ``https://``, a host, an
    optional port and path, no fragment; raises ``ValueError`` saying what is wrong."""
    example = "'https://hooks.example.com/ftserver'"
    if not url.isascii() or any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise ValueError(f"expected an ASCII URL without spaces like {example}, got {url!r}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL like {example}, got {url!r}")
    if parts.fragment or url.endswith("#"):
        raise ValueError(f"a fragment (#...) is never sent, drop it: {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"expected a port 1-65535 in {url!r}") from None
    if port == 0:
        raise ValueError(f"expected a port 1-65535 in {url!r}")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _check_notify(notify: NotifyConfig) -> None:
    """The webhook's URL and secret (docs/events.md)."""
    if not notify.url:
        if notify.secret:
            raise ConfigError("notify.secret: used only with notify.url (the webhook)")
        return
    try:
        webhook_url(notify.url)
    except ValueError as exc:
        raise ConfigError(f"notify.url: {exc}") from None
    if not notify.secret:
        raise ConfigError(
            "notify.secret: required with notify.url (receivers verify each body's "
            "HMAC-SHA256 with it; for example the output of 'openssl rand -hex 32')"
        )
    if len(notify.secret) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"notify.secret: must be at least {MIN_TOKEN_LENGTH} characters")


def _check_mqtt_security(config: Config) -> None:
    mqtt = config.mqtt
    listeners = [mqtt.listen]
    if mqtt.tls_listen:
        try:
            listeners.append(host_port(mqtt.tls_listen))
        except ValueError as exc:
            raise ConfigError(f"mqtt.tls_listen: {exc}") from None
        for key in ("tls_cert", "tls_key"):
            path = getattr(mqtt, key)
            if not path:
                raise ConfigError(f"mqtt.{key}: required by mqtt.tls_listen")
            if not Path(path).is_file():
                raise ConfigError(f"mqtt.{key}: no such file {path!r}")
        if mqtt.tls_client_cert != "none" and not mqtt.tls_ca:
            raise ConfigError("mqtt.tls_ca: required when mqtt.tls_client_cert is not none")
        if mqtt.tls_identity != "none" and mqtt.tls_client_cert != "required":
            raise ConfigError('mqtt.tls_identity: needs mqtt.tls_client_cert = "required"')
    sec = config.security
    if sec.password_file and not Path(sec.password_file).is_file():
        raise ConfigError(
            f"security.password_file: no such file {sec.password_file!r} "
            "(create it with `ftserver passwd FILE USER`)"
        )
    if sec.acl_file:
        from ftserver.acl import Acl, AclError

        try:
            Acl.load(Path(sec.acl_file))
        except AclError as exc:
            raise ConfigError(f"security.acl_file: {exc}") from None
    public = [lst for lst in listeners if not is_loopback_host(lst.host)]
    certified = bool(mqtt.tls_listen) and mqtt.tls_client_cert == "required"
    if public and not (
        sec.password_file or sec.allow_anonymous or certified or broker_authenticates(config)
    ):
        raise ConfigError(
            f"security.password_file: MQTT would listen on {public[0]} without "
            "authentication: set security.password_file (see `ftserver passwd`), require "
            "TLS client certificates on a TLS-only listener, relay to a broker that "
            'authenticates (relay.upstream with relay.credentials = "passthrough"), or set '
            "security.allow_anonymous = true to accept anyone"
        )


def broker_authenticates(config: Config) -> bool:
    """Relay mode passing each device's own credentials: the broker decides who connects
    (every CONNACK waits for the broker's), so ftserver needs no password file of its own."""
    return config.relay.enabled and config.relay.credentials == "passthrough"


def is_loopback_host(host: str) -> bool:
    """Whether a listen host only accepts connections from this machine.

    ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``) are; every other name is
    not, since it may resolve to any interface.
    """
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_http(http: HttpConfig) -> None:
    token = http.token
    if token and (
        len(token) < MIN_TOKEN_LENGTH or not all(0x21 <= ord(ch) <= 0x7E for ch in token)
    ):
        raise ConfigError(
            f"http.token: must be at least {MIN_TOKEN_LENGTH} printable ASCII characters "
            "without spaces (for example the output of 'openssl rand -hex 32')"
        )
    if not token and not http.allow_anonymous and not is_loopback_host(http.listen.host):
        raise ConfigError(
            f"http.token: the HTTP API listens on {http.listen}, which is not a loopback "
            "address, and no token is set; set http.token to a secret of at least "
            f"{MIN_TOKEN_LENGTH} characters (clients then send 'Authorization: Bearer "
            "<token>'), listen on 127.0.0.1, or set http.allow_anonymous = true to serve "
            "the API to anyone who can reach it"
        )


@dataclass(frozen=True)
class ConfigSource:
    """Where the configuration came from, so that a worker process can load it again."""

    path: str | None
    overrides: dict[str, object]
