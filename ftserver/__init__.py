"""ftserver: file transfer over MQTT (EMQX EIP-0021 compatible) ingest server."""

__version__ = "0.1.0.dev0"
