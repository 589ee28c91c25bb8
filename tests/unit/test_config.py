"""Configuration: defaults, TOML loading, value syntax, errors naming the key, the docs."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftserver import config as cfgmod
from ftserver.config import (
    Config,
    ConfigError,
    HostPort,
    describe,
    format_duration,
    format_size,
    host_port,
    load_config,
    parse_duration,
    parse_size,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ftserver.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_for(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), {})
    return str(info.value)


# ------------------------------------------------------------------------------------------
# defaults


def test_defaults() -> None:
    c = load_config(None, {})
    assert c == Config()
    assert c.mqtt.listen == HostPort("127.0.0.1", 1883)
    assert c.http.listen == HostPort("127.0.0.1", 18083)
    assert c.server.data_dir == Path("./ftdata")
    assert c.server.workers == 0
    assert c.server.log_level == "info"
    assert c.limits.max_packet_size == 16 * 1024 * 1024
    assert c.limits.max_file_size == 64 * 1024**3
    assert c.transfer.assemble_timeout == 300.0
    assert c.transfer.segments_gc_interval == 3600.0
    assert c.transfer.segments_ttl_min == 300
    assert c.transfer.segments_ttl_max == 86400
    assert c.storage.durability == "fast"
    assert c.mqtt.connect_timeout == 10.0
    assert c.mqtt.receive_maximum == 64
    assert c.mqtt.topic_alias_maximum == 16
    assert c.mqtt.keepalive_max == 0
    assert c.export.kind == "local"


def test_worker_count_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert Config().server.worker_count == 6
    assert load_config(None, {"server.workers": 3}).server.worker_count == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert Config().server.worker_count == 1


def test_config_is_frozen() -> None:
    c = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.limits.max_file_size = 1  # type: ignore[misc]


def test_every_default_passes_its_own_validation() -> None:
    """Rendering each default as TOML and loading it gives the default back."""
    lines: list[str] = []
    group = None
    for doc in describe():
        g, name = doc.key.split(".")
        if g != group:
            lines.append(f"[{g}]")
            group = g
        lines.append(f"{name} = {doc.default}")
    data = tomllib.loads("\n".join(lines))
    overrides = {f"{g}.{k}": v for g, table in data.items() for k, v in table.items()}
    assert load_config(None, overrides) == Config()


# ------------------------------------------------------------------------------------------
# loading TOML


def test_load_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [server]
        data_dir = "/var/lib/ft"
        workers = 2
        log_level = "DEBUG"

        [mqtt]
        listen = "[::]:8883"
        keepalive_max = "10m"
        receive_maximum = 10
        topic_alias_maximum = 0
        session_expiry_max = 0
        connect_timeout = "500ms"

        [http]
        listen = "localhost:8080"

        [limits]
        max_packet_size = "1MB"
        max_file_size = 1024
        max_inflight_responses = 5

        [transfer]
        assemble_timeout = 30
        segments_ttl_min = "1s"
        segments_ttl_max = "1h"
        segments_gc_interval = "2d"

        [storage]
        durability = "sync"

        [export]
        kind = "local"

        [security]
        allow_anonymous = true
        """,
    )
    c = load_config(path, {})
    assert c.server == cfgmod.ServerConfig(Path("/var/lib/ft"), 2, "debug")
    assert c.mqtt.listen == HostPort("::", 8883)
    assert c.mqtt.keepalive_max == 600
    assert (c.mqtt.receive_maximum, c.mqtt.topic_alias_maximum) == (10, 0)
    assert c.mqtt.session_expiry_max == 0
    assert c.mqtt.connect_timeout == 0.5
    assert c.http.listen == HostPort("localhost", 8080)
    limits = c.limits
    assert (limits.max_packet_size, limits.max_file_size, limits.max_inflight_responses) == (
        1_000_000,
        1024,
        5,
    )
    assert c.security.allow_anonymous is True
    assert c.transfer == cfgmod.TransferConfig(30.0, 1, 3600, 172800.0)
    assert c.storage.durability == "sync"


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, "[limits]\nmax_file_size = '1GiB'\n"), {})
    assert c.limits.max_file_size == 1024**3
    assert c.limits.max_packet_size == Config().limits.max_packet_size
    assert c.mqtt == Config().mqtt


def test_empty_file(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), {}) == Config()


def test_overrides_win_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nworkers = 2\n[limits]\nmax_file_size = 100\n")
    c = load_config(path, {"server.workers": "7", "limits.max_file_size": "2KiB"})
    assert c.server.workers == 7
    assert c.limits.max_file_size == 2048


def test_overrides_accept_typed_values() -> None:
    c = load_config(
        None,
        {
            "server.data_dir": Path("/tmp/x"),
            "mqtt.listen": HostPort("0.0.0.0", 0),
            "security.allow_anonymous": True,
            "limits.max_file_size": 10,
            "transfer.assemble_timeout": 2,
        },
    )
    assert c.server.data_dir == Path("/tmp/x")
    assert c.mqtt.listen == HostPort("0.0.0.0", 0)
    assert c.limits.max_file_size == 10
    assert c.transfer.assemble_timeout == 2.0


def test_overrides_optional() -> None:
    assert load_config(None) == Config()


# ------------------------------------------------------------------------------------------
# errors name the full key


def test_error_message_example(tmp_path: Path) -> None:
    assert (
        error_for(tmp_path, "[limits]\nmax_packet_size = 'abc'\n")
        == "limits.max_packet_size: expected a size like '16MiB', got 'abc'"
    )


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[mqtt]\nlisten = 'nope'\n", "mqtt.listen: "),
        ("[mqtt]\nlisten = 1883\n", "mqtt.listen: expected a string"),
        ("[server]\nworkers = 'four'\n", "server.workers: expected an integer"),
        ("[server]\nworkers = '4'\n", "server.workers: expected an integer"),
        ("[server]\nworkers = true\n", "server.workers: expected an integer"),
        ("[server]\nworkers = 2.0\n", "server.workers: expected an integer"),
        ("[server]\nworkers = -1\n", "server.workers: must be at least 0"),
        ("[server]\nworkers = 100000\n", "server.workers: must be at most 1024"),
        ("[server]\nlog_level = 'verbose'\n", "server.log_level: expected one of"),
        ("[server]\ndata_dir = ''\n", "server.data_dir: "),
        ("[server]\ndata_dir = 3\n", "server.data_dir: "),
        ("[mqtt]\nreceive_maximum = 0\n", "mqtt.receive_maximum: must be at least 1"),
        ("[mqtt]\nreceive_maximum = 65536\n", "mqtt.receive_maximum: must be at most 65535"),
        ("[mqtt]\ntopic_alias_maximum = -1\n", "mqtt.topic_alias_maximum: "),
        ("[mqtt]\nkeepalive_max = '1500ms'\n", "mqtt.keepalive_max: expected a whole number"),
        ("[mqtt]\nkeepalive_max = '2d'\n", "mqtt.keepalive_max: must be at most"),
        ("[mqtt]\nsession_expiry_max = '50000d'\n", "mqtt.session_expiry_max: must be at most"),
        ("[mqtt]\nconnect_timeout = 0\n", "mqtt.connect_timeout: must be at least"),
        ("[mqtt]\nconnect_timeout = '5 minutes'\n", "mqtt.connect_timeout: expected a duration"),
        ("[mqtt]\nconnect_timeout = '5M'\n", "mqtt.connect_timeout: expected a duration"),
        ("[mqtt]\nconnect_timeout = 1.5\n", "mqtt.connect_timeout: expected a duration"),
        ("[mqtt]\nconnect_timeout = '-5s'\n", "mqtt.connect_timeout: expected a duration"),
        ("[limits]\nmax_packet_size = 10\n", "limits.max_packet_size: must be at least 1KiB"),
        ("[limits]\nmax_packet_size = '1GiB'\n", "limits.max_packet_size: must be at most"),
        ("[limits]\nmax_packet_size = -5\n", "limits.max_packet_size: a size cannot be negative"),
        ("[limits]\nmax_file_size = 0\n", "limits.max_file_size: must be at least"),
        ("[limits]\nmax_file_size = '9999999TiB'\n", "limits.max_file_size: must be at most"),
        ("[limits]\nmax_file_size = '16 XB'\n", "limits.max_file_size: expected a size"),
        ("[limits]\nmax_file_size = '1.5GiB'\n", "limits.max_file_size: expected a size"),
        ("[limits]\nmax_file_size = '１GiB'\n", "limits.max_file_size: expected a size"),
        ("[limits]\nmax_file_size = 1e9\n", "limits.max_file_size: expected a size"),
        ("[transfer]\nsegments_ttl_min = 0\n", "transfer.segments_ttl_min: must be at least"),
        ("[storage]\ndurability = 'never'\n", "storage.durability: expected one of 'fast', 'sync'"),
        ("[export]\nkind = 's3'\n", "export.bucket: required with export.kind"),
        ("[export]\nkind = 'ftp'\n", "export.kind: expected one of 'local', 's3'"),
        ("[mqtt]\nlisten_address = 'x'\n", "mqtt.listen_address: unknown key"),
        ("[limits]\nmax_file_sizes = 1\n", "limits.max_file_sizes: unknown key"),
        ("[limit]\nmax_file_size = 1\n", "limit: unknown table"),
        ("workers = 4\n", "workers: unknown table"),
        ("mqtt = 4\n", "mqtt: expected a table"),
        ("[mqtt.listen]\nhost = 'x'\n", "mqtt.listen: "),
        (
            "[transfer]\nsegments_ttl_min = '2h'\nsegments_ttl_max = '1h'\n",
            "transfer.segments_ttl_min: must not exceed transfer.segments_ttl_max",
        ),
    ],
)
def test_bad_values(tmp_path: Path, toml: str, needle: str) -> None:
    message = error_for(tmp_path, toml)
    assert message.startswith(needle) or needle in message, message


def test_bad_override_keys() -> None:
    for key in ("workers", "server.", ".workers", "server.workers.x", "nope.workers", ""):
        with pytest.raises(ConfigError, match="unknown key"):
            load_config(None, {key: 1})


def test_bad_override_value_names_key() -> None:
    with pytest.raises(ConfigError, match=r"^mqtt\.receive_maximum: expected an integer"):
        load_config(None, {"mqtt.receive_maximum": "lots"})
    with pytest.raises(ConfigError, match=r"^server\.workers: expected an integer"):
        load_config(None, {"server.workers": "-1"})


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", {})


def test_invalid_toml(tmp_path: Path) -> None:
    message = error_for(tmp_path, "[server\nworkers = 1\n")
    assert "invalid TOML" in message and "ftserver.toml" in message


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# ------------------------------------------------------------------------------------------
# value syntax


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (0, 0),
        (12345, 12345),
        ("123", 123),
        ("10B", 10),
        ("1KB", 1000),
        ("10MB", 10_000_000),
        ("2GB", 2_000_000_000),
        ("1TB", 10**12),
        ("512KiB", 512 * 1024),
        ("16MiB", 16 * 1024**2),
        ("64GiB", 64 * 1024**3),
        ("1TiB", 1024**4),
        ("16mib", 16 * 1024**2),
        ("16 MiB", 16 * 1024**2),
        (" 4KiB ", 4096),
        ("007KiB", 7 * 1024),
    ],
)
def test_parse_size(text: object, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    "text",
    ["", "abc", "MiB", "1.5MiB", "1e3", "-1", "1 K", "1KIB2", "1  MiB", True, 1.0, None, "٣MiB"],
)
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (0, 0.0),
        (30, 30.0),
        ("30", 30.0),
        ("500ms", 0.5),
        ("1ms", 0.001),
        ("5s", 5.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("24h", 86400.0),
        ("10 s", 10.0),
    ],
)
def test_parse_duration(text: object, value: float) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize(
    "text", ["", "s", "5x", "5S", "5H", "1.5s", "-1s", "1h30m", "5 min", True, 1.5, None, [5]]
)
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=2**63))
def test_format_size_roundtrip(n: int) -> None:
    assert parse_size(format_size(n)) == n


@given(st.integers(min_value=0, max_value=10**12))
def test_format_duration_roundtrip(ms: int) -> None:
    assert parse_duration(format_duration(ms / 1000)) == ms / 1000


def test_format_examples() -> None:
    assert format_size(16 * 1024**2) == "16MiB"
    assert format_size(1000) == "1000B"
    assert format_size(0) == "0B"
    assert format_duration(300) == "5m"
    assert format_duration(0.5) == "500ms"
    assert format_duration(0) == "0s"
    assert format_duration(90) == "90s"


# ------------------------------------------------------------------------------------------
# host:port


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:1883", "127.0.0.1", 1883),
        ("0.0.0.0:0", "0.0.0.0", 0),
        ("localhost:65535", "localhost", 65535),
        ("mqtt.example.com:8883", "mqtt.example.com", 8883),
        ("my-host.:1", "my-host.", 1),
        ("[::1]:1883", "::1", 1883),
        ("[::]:1883", "::", 1883),
        ("[2001:db8::1]:80", "2001:db8::1", 80),
        ("[fe80::1%eth0]:80", "fe80::1%eth0", 80),
        ("127.0.0.1:01883", "127.0.0.1", 1883),
    ],
)
def test_host_port(text: str, host: str, port: int) -> None:
    hp = host_port(text)
    assert hp == HostPort(host, port)
    assert host_port(str(hp)) == hp


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1883",
        ":1883",
        "localhost",
        "localhost:",
        "localhost:65536",
        "localhost:-1",
        "localhost:+1",
        "localhost: 1",
        "localhost:0x10",
        "localhost:１",
        "::1:1883",
        "[::1]",
        "[::1]1883",
        "[::1:1883",
        "[nothex]:1883",
        "[127.0.0.1]:1883",
        "256.0.0.1:1",
        "1.2.3:1",
        "bad_host:1",
        "-bad:1",
        "bad-:1",
        "a..b:1",
        "exämple.com:1",
        "a b:1",
        "x" * 64 + ":1",
    ],
)
def test_host_port_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        host_port(text)


def test_host_port_str() -> None:
    assert str(HostPort("::1", 1883)) == "[::1]:1883"
    assert str(HostPort("127.0.0.1", 1883)) == "127.0.0.1:1883"


# ------------------------------------------------------------------------------------------
# documentation: every key in one table, and docs/configuration.md lists exactly those

ROW = re.compile(r"^\|\s*`([a-z_]+\.[a-z_]+)`\s*\|\s*([^|]+?)\s*\|\s*`([^`]*)`\s*\|\s*(.+?)\s*\|$")


def doc_rows() -> dict[str, tuple[str, str, str]]:
    rows: dict[str, tuple[str, str, str]] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = ROW.match(line.strip())
        if m:
            key, kind, default, meaning = m.groups()
            assert key not in rows, f"{key} documented twice"
            rows[key] = (kind, default, meaning)
    return rows


def test_describe_covers_every_field() -> None:
    keys = {d.key for d in describe()}
    expected = {
        f"{group.name}.{f.name}"
        for group in dataclasses.fields(Config)
        for f in dataclasses.fields(getattr(Config(), group.name))
    }
    assert keys == expected
    assert Config.describe() == describe()
    for d in describe():
        assert d.doc and d.doc.endswith(".") and "\n" not in d.doc, d.key
        assert d.kind in {
            "size", "duration", "seconds", "int", "bool", "str", "choice", "path", "host:port"
        }  # fmt: skip
        if d.kind == "choice":
            assert d.choices and d.default.strip('"') in d.choices


def test_required_keys_exist() -> None:
    keys = {d.key.split(".")[1] for d in describe()}
    for name in (
        "listen",
        "data_dir",
        "workers",
        "log_level",
        "max_packet_size",
        "max_file_size",
        "assemble_timeout",
        "segments_gc_interval",
        "segments_ttl_min",
        "segments_ttl_max",
        "durability",
        "keepalive_max",
        "receive_maximum",
        "topic_alias_maximum",
        "max_inflight_responses",
        "session_expiry_max",
        "connect_timeout",
        "kind",
    ):
        assert name in keys, name


def test_docs_list_exactly_the_keys() -> None:
    rows = doc_rows()
    documented = set(rows)
    declared = {d.key for d in describe()}
    assert documented - declared == set(), "documented but not declared"
    assert declared - documented == set(), "declared but not documented"


def test_docs_types_and_defaults_match() -> None:
    rows = doc_rows()
    for d in describe():
        kind, default, meaning = rows[d.key]
        assert kind == d.kind, d.key
        assert default == d.default, d.key
        assert meaning, d.key
        for choice in d.choices:
            assert f"`{choice}`" in meaning, (d.key, choice)


def test_docs_keys_under_their_table_heading() -> None:
    heading = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## ["):
            heading = line[4:].rstrip("]")
        m = ROW.match(line.strip())
        if m:
            assert m.group(1).split(".")[0] == heading, m.group(1)


def test_doc_defaults_parse_as_toml() -> None:
    for key, (_kind, default, _meaning) in doc_rows().items():
        value: Any = tomllib.loads(f"v = {default}")["v"]
        assert load_config(None, {key: value}) == Config(), key


def test_public_mqtt_listener_needs_authentication(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"security\.password_file: MQTT would listen on"):
        load_config(None, {"mqtt.listen": "0.0.0.0:1883"})
    with pytest.raises(ConfigError, match=r"security\.password_file: no such file"):
        load_config(None, {"security.password_file": str(tmp_path / "nope")})
    users = tmp_path / "users"
    users.write_text("")
    c = load_config(None, {"mqtt.listen": "0.0.0.0:1883", "security.password_file": str(users)})
    assert c.security.password_file == str(users)
    c = load_config(None, {"mqtt.listen": "0.0.0.0:1883", "security.allow_anonymous": "true"})
    assert c.security.allow_anonymous
    # loopback only: anonymous is fine
    assert load_config(None, {"mqtt.listen": "127.0.0.1:1883"}).security.password_file == ""


def test_tls_listener_needs_its_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.tls_cert: required"):
        load_config(None, {"mqtt.tls_listen": "127.0.0.1:8883"})
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    base = {"mqtt.tls_listen": "127.0.0.1:8883", "mqtt.tls_cert": str(cert)}
    with pytest.raises(ConfigError, match=r"mqtt\.tls_key: required"):
        load_config(None, base)
    base["mqtt.tls_key"] = str(key)
    assert load_config(None, base).mqtt.tls_listen == "127.0.0.1:8883"
    with pytest.raises(ConfigError, match=r"mqtt\.tls_ca"):
        load_config(None, {**base, "mqtt.tls_client_cert": "required"})
    with pytest.raises(ConfigError, match=r"mqtt\.tls_identity"):
        load_config(None, {**base, "mqtt.tls_identity": "username"})
    with pytest.raises(ConfigError, match=r"mqtt\.tls_listen"):
        load_config(None, {**base, "mqtt.tls_listen": "nonsense"})


# ------------------------------------------------------------------------------------------
# [relay]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1883", ("127.0.0.1", 1883, False)),
        ("mqtts://broker.example", ("broker.example", 8883, True)),
        ("mqtt://broker.example", ("broker.example", 1883, False)),
        ("mqtt://[::1]:2883/", ("::1", 2883, False)),
    ],
)
def test_relay_upstream_parsed(url: str, expected: tuple[str, int, bool]) -> None:
    config = load_config(None, {"relay.upstream": url})
    assert config.relay.enabled and config.relay.address == expected


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"relay.upstream": "tcp://127.0.0.1:1883"}, "relay.upstream"),
        ({"relay.upstream": "mqtt://127.0.0.1:0"}, "relay.upstream"),
        ({"relay.upstream": "mqtt://a b:1883"}, "relay.upstream"),
        ({"relay.events_topic": "ft/events"}, "relay.events_topic"),
        ({"relay.upstream": "mqtt://h", "relay.events_topic": "ft/#"}, "relay.events_topic"),
        ({"relay.upstream": "mqtt://h", "relay.events_topic": "$SYS/x"}, "relay.events_topic"),
        ({"relay.upstream": "mqtt://h", "relay.credentials": "fixed"}, "relay.username"),
        ({"relay.upstream": "mqtt://h", "relay.username": "u"}, "relay.username"),
        ({"relay.upstream": "mqtt://h", "relay.ca_file": "/etc/hostname"}, "relay.ca_file"),
        ({"relay.upstream": "mqtts://h", "relay.ca_file": "/no/such/file"}, "relay.ca_file"),
        ({"relay.upstream": "mqtt://h", "relay.credentials": "maybe"}, "relay.credentials"),
        ({"relay.upstream": "mqtt://h", "relay.connect_timeout": "0s"}, "relay.connect_timeout"),
        ({"relay.upstream": "mqtt://h", "relay.nonsense": "1"}, "relay.nonsense"),
    ],
)
def test_relay_bad_values_name_the_key(overrides: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(None, overrides)


def test_relay_password_never_in_repr() -> None:
    config = load_config(
        None,
        {
            "relay.upstream": "mqtt://h",
            "relay.credentials": "fixed",
            "relay.username": "ft",
            "relay.password": "s3cret-value",
        },
    )
    assert "s3cret-value" not in repr(config)


def test_relay_passthrough_lets_the_broker_authenticate_a_public_listener() -> None:
    public = {"mqtt.listen": "0.0.0.0:1883"}
    with pytest.raises(ConfigError, match=r"security\.password_file"):
        load_config(None, public)
    load_config(None, {**public, "relay.upstream": "mqtt://127.0.0.1:1883"})
    fixed = {"relay.credentials": "fixed", "relay.username": "ftserver"}
    with pytest.raises(ConfigError, match=r"security\.password_file"):
        load_config(None, {**public, "relay.upstream": "mqtt://127.0.0.1:1883", **fixed})
