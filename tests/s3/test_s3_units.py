"""The S3 exporter's pure parts (no server): header encoding, error descriptions, part
sizes, key parsing, configuration."""

from __future__ import annotations

import base64

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from ftserver.config import ConfigError, load_config
from ftserver.export.s3 import (
    decode_header_value,
    encode_header_value,
    parse_key,
    part_size_for,
    s3_error,
)

MiB = 1 << 20


@pytest.mark.parametrize(
    "value",
    ["client-1", "a b", "dev/1", "é", "设备", "🚀", " lead", "trail ", "tab\t", "=?x?=", "", "%"],
)
def test_header_values_round_trip(value: str) -> None:
    encoded = encode_header_value(value)
    assert encoded.isascii() and "\n" not in encoded and "\r" not in encoded
    assert decode_header_value(encoded) == value


def test_header_values_plain_ascii_travel_raw() -> None:
    assert encode_header_value("client-1") == "client-1"
    assert encode_header_value("dev/1:x%y") == "dev/1:x%y"
    assert encode_header_value("é") == "=?UTF-8?B?" + base64.b64encode("é".encode()).decode() + "?="
    # what AWS returns for non-ASCII metadata (RFC 2047, either encoding) is decoded too
    assert decode_header_value("=?UTF-8?Q?=C3=A9t=C3=A9?=") == "été"


def _client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


@pytest.mark.parametrize(
    ("exc", "description"),
    [
        (_client_error("NoSuchBucket", 404), "s3_no_such_bucket"),
        (_client_error("AccessDenied", 403), "s3_access_denied"),
        (_client_error("InvalidAccessKeyId", 403), "s3_invalid_access_key_id"),
        (_client_error("SignatureDoesNotMatch", 403), "s3_signature_does_not_match"),
        (_client_error("SlowDown", 503), "s3_unavailable"),
        (_client_error("403", 403), "s3_http_403"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "s3_unavailable"),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), "s3_unavailable"),
        (NoCredentialsError(), "s3_no_credentials"),
        (FileNotFoundError(2, "gone"), "enoent"),
        (RuntimeError("?"), "s3_error"),
    ],
)
def test_error_descriptions(exc: BaseException, description: str) -> None:
    err = s3_error(exc)
    assert err.description == description
    # S3 away or overloaded: the device waits and sends the fin again; the rest is final
    assert err.reason_code == (0x97 if description == "s3_unavailable" else 0x80)


def test_part_sizes() -> None:
    assert part_size_for(100 * MiB, 16 * MiB) == 16 * MiB
    assert part_size_for(16 * MiB * 10_000, 16 * MiB) == 16 * MiB
    big = 16 * MiB * 10_000 + 1
    part = part_size_for(big, 16 * MiB)
    assert part % MiB == 0 and -(-big // part) <= 10_000


def test_parse_key() -> None:
    assert parse_key("c/f/n.bin") == ("c", "f", "n.bin")
    assert parse_key("dev%2F1/f%251/x y") == ("dev/1", "f%1", "x y")
    for bad in ("a/b", "a/b/c/d", "a//b", "/a/b", "%zz/f/n", "c/f/..", "c/f/."):
        assert parse_key(bad) is None, bad


def test_config_requires_a_bucket_and_hides_the_secret() -> None:
    with pytest.raises(ConfigError, match=r"export\.bucket: required"):
        load_config(None, {"export.kind": "s3"})
    with pytest.raises(ConfigError, match=r"export\.endpoint"):
        load_config(None, {"export.kind": "s3", "export.bucket": "b", "export.endpoint": "x"})
    with pytest.raises(ConfigError, match=r"export\.access_key_id: give both"):
        load_config(None, {"export.kind": "s3", "export.bucket": "b", "export.access_key_id": "a"})
    with pytest.raises(ConfigError, match=r"export\.part_size: must be at least"):
        load_config(None, {"export.part_size": "1MiB"})
    cfg = load_config(
        None,
        {
            "export.kind": "s3",
            "export.bucket": "b",
            "export.access_key_id": "AKIDEXAMPLE",
            "export.secret_access_key": "topsecret-value",
            "export.endpoint": "https://minio.example.com:9000",
        },
    )
    assert cfg.export.secret_access_key == "topsecret-value"
    assert "topsecret-value" not in repr(cfg)
    assert "topsecret-value" not in str(cfg.export)
