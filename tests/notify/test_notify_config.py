"""The [notify] keys: checked at load time, naming the key; the secret never shows."""

from __future__ import annotations

import pytest

from ftserver.config import ConfigError, ExportConfig, load_config
from ftserver.notify.event import destination_of, rfc3339
from ftserver.notify.webhook import signature

SECRET = "0123456789abcdef0123"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"notify.url": "ftp://127.0.0.1/x", "notify.secret": SECRET}, r"notify\.url: expected"),
        ({"notify.url": "http://", "notify.secret": SECRET}, r"notify\.url: expected"),
        ({"notify.url": "http://h:0/", "notify.secret": SECRET}, r"notify\.url: expected a port"),
        ({"notify.url": "http://h/a b", "notify.secret": SECRET}, r"notify\.url: expected an"),
        ({"notify.url": "http://h/#x", "notify.secret": SECRET}, r"notify\.url: a fragment"),
        ({"notify.url": "http://h/x"}, r"notify\.secret: required with notify\.url"),
        ({"notify.url": "http://h/x", "notify.secret": "short"}, r"notify\.secret: must be at"),
        ({"notify.secret": SECRET}, r"notify\.secret: used only with notify\.url"),
        ({"notify.max_pending": "0"}, r"notify\.max_pending: must be at least 1"),
        ({"notify.retry_max": "10ms"}, r"notify\.retry_max: must be at least 200ms"),
        ({"notify.timeout": "x"}, r"notify\.timeout: expected a duration"),
        ({"notify.urls": "http://h/"}, r"notify\.urls: unknown key"),
    ],
)
def test_bad_values_name_their_key(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_webhook_configuration_and_its_secret_stays_out_of_repr() -> None:
    c = load_config(
        None,
        {"notify.url": "https://hooks.example.com:8443/ft?k=1", "notify.secret": SECRET},
    )
    assert c.notify.url == "https://hooks.example.com:8443/ft?k=1"
    assert c.notify.secret == SECRET
    assert SECRET not in repr(c) and SECRET not in str(c)
    # a plain http:// URL to another host is allowed (docs/events.md says what it means)
    assert load_config(None, {"notify.url": "http://10.1.2.3/x", "notify.secret": SECRET})


def test_the_signature_is_hmac_sha256_of_the_exact_body() -> None:
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
    assert signature("Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def test_destinations_and_times() -> None:
    from pathlib import Path

    from ftserver.export.base import ExportInfo
    from ftserver.meta import FileMeta

    info = ExportInfo("dev/1", "f 1", FileMeta(name="a.bin"), 3, "AB", Path("rel/a.bin"))
    s3 = destination_of(ExportConfig(kind="s3", bucket="bkt"))(info)
    assert s3.startswith("s3://bkt/") and s3.endswith("/a.bin") and s3.count("/") == 5
    assert destination_of(ExportConfig())(info) == str(Path("rel/a.bin").absolute())
    assert rfc3339(0.5) == "1970-01-01T00:00:00.500Z"
