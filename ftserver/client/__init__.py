"""An uploader for ftserver (and EMQX): file transfer over MQTT (EIP-0021) on aiomqtt.

::

    from ftserver.client import MqttSettings, UploadOptions, upload

    result = await upload("report.bin", mqtt=MqttSettings(host="127.0.0.1", port=1883))

    options = UploadOptions(segment_size=64 * 1024, state_file="up.json", resume=True)
    result = await upload("report.bin", options)    # the settings, built once

    async with aiomqtt.Client("broker", protocol=aiomqtt.ProtocolVersion.V5) as client:
        await upload("report.bin", client=client)   # over the application's own connection

:func:`upload` sends init, a window of segments and fin over QoS 1, and returns an
:class:`UploadResult` once the server confirmed the export; it raises an :class:`UploadError`
otherwise. Its settings are an :class:`UploadOptions`; keyword arguments of the same names
override its fields. It resends what the server refused (0x80) or reported missing at fin,
pauses when asked to (0x97), stops on 0x83, reconnects a connection of its own when it drops,
and records its progress in a state file so that a restarted process resumes the transfer.

PUBACK reason codes, which aiomqtt drops, reach it through :class:`~ftserver.client.tap.Tap`:
a chained paho ``on_publish`` callback on the paho client inside the aiomqtt client (see that
module's docstring). The algorithm is described in :mod:`ftserver.client.uploader`; the
command line (``ftserver upload``, ``ftserver files``) is :mod:`ftserver.client.cli`; the HTTP
API client is :mod:`ftserver.client.api`.
"""

from ftserver.client.errors import (
    ConnectionFailed,
    UploadCancelled,
    UploadError,
    UploadRejected,
    UploadTimeout,
)
from ftserver.client.link import MqttSettings
from ftserver.client.options import DEFAULT_SEGMENT_SIZE, DEFAULT_WINDOW, Timeouts, UploadOptions
from ftserver.client.report import Progress, UploadResult
from ftserver.client.uploader import upload

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "DEFAULT_WINDOW",
    "ConnectionFailed",
    "MqttSettings",
    "Progress",
    "Timeouts",
    "UploadCancelled",
    "UploadError",
    "UploadOptions",
    "UploadRejected",
    "UploadResult",
    "UploadTimeout",
    "upload",
]
