"""What EMQX's reference client `emqx-ft` does, reproduced with paho-mqtt: MQTT 5, session
expiry 120, init (name, size, lowercase checksum), every 1024-byte segment and the fin
published back to back without waiting for acknowledgements, then disconnect on the fin's
PUBACK. Sync mode and --async."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ftharness import ServerProcess, find_export, read_manifest


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_emqx_ft_reference_client(server: ServerProcess, is_async: bool) -> None:
    data = os.urandom(200_000 + 17)
    checksum = hashlib.sha256(data).hexdigest()
    client_id = f"emqx-ft-{'async' if is_async else 'sync'}"
    file_id = "file-id-1"
    meta = {"name": "camera.jpg", "size": len(data), "checksum": checksum}
    prefix = f"$file-async/{file_id}" if is_async else f"$file/{file_id}"

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 120
    client.connect("127.0.0.1", server.mqtt_port, 60, properties=props)
    client.publish(f"{prefix}/init", json.dumps(meta), qos=1)
    for offset in range(0, len(data), 1024):
        client.publish(f"{prefix}/{offset}", data[offset : offset + 1024], qos=1)
    info = client.publish(f"{prefix}/fin/{len(data)}", "", qos=1)
    codes: dict[int, int] = {}
    done = threading.Event()

    def on_publish(c: Any, userdata: Any, mid: int, rc: Any, properties: Any) -> None:
        codes[mid] = int(rc.value)
        if mid == info.mid:
            c.disconnect()
            done.set()

    client.on_publish = on_publish
    thread = threading.Thread(target=client.loop_forever, daemon=True)
    thread.start()
    assert done.wait(60), "no PUBACK for the fin"
    thread.join(10)
    assert codes[info.mid] == 0
    assert len(codes) == 2 + (len(data) + 1023) // 1024
    assert set(codes.values()) == {0}
    if is_async:
        # async: the fin's PUBACK means "accepted"; the export follows. Wait for it on disk:
        # the file with its manifest (the manifest is written first, the file's rename last)
        path = find_export(server.exports, client_id, file_id, "camera.jpg")
        manifest_path = path.with_name(path.name + ".MANIFEST.json")
        for _ in range(200):
            if manifest_path.exists() and path.exists():
                break
            threading.Event().wait(0.05)
    path = find_export(server.exports, client_id, file_id, "camera.jpg")
    assert path.read_bytes() == data
    manifest = read_manifest(path)
    assert manifest["name"] == "camera.jpg"
    assert manifest["size"] == len(data)
    assert manifest["checksum"] == checksum.upper()
