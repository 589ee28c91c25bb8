"""Helpers of the S3 export tests: how an ftserver process is pointed at the test server."""

from __future__ import annotations

from seaweed import ACCESS_KEY, REGION, SECRET_KEY, SeaweedFS

#: the environment of every ftserver process: AWS settings from the tests only
AWS_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/ftserver-tests/config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/ftserver-tests/credentials",
}


def s3_args(seaweed: SeaweedFS, bucket: str, **overrides: object) -> list[str]:
    """``--set`` flags pointing ftserver at the test server and bucket."""
    settings: dict[str, object] = {
        "export.kind": "s3",
        "export.endpoint": seaweed.endpoint,
        "export.region": REGION,
        "export.bucket": bucket,
        "export.access_key_id": ACCESS_KEY,
        "export.secret_access_key": SECRET_KEY,
        "export.addressing_style": "path",
        "export.retries": 1,
        "export.request_timeout": "20s",
        "server.workers": 1,
    }
    settings.update(overrides)
    args: list[str] = []
    for key, value in settings.items():
        if value is not None:
            args += ["--set", f"{key}={value}"]
    return args
