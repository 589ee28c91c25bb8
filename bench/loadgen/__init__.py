"""The load generator: many simulated devices uploading files, written for speed.

``python -m bench.loadgen --help`` lists the parameters (:mod:`.spec`). One asyncio (uvloop)
event loop per process drives every device of that process through callbacks: no task per
segment, headers from ftserver's IO-free codec, payloads as memoryviews of one random pool
(:mod:`.content`). Targets: ``ftserver`` and ``mosquitto`` (MQTT), ``naive`` (MQTT to
Mosquitto, fins answered by the naive subscriber), ``raw`` (the same bytes into a discard
server) and ``http`` (resumable HTTP PUT). Every run ends with a verification
(:func:`.run.verify`): reason codes, then each export's presence and size.
"""
