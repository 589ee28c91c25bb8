"""The baselines the macro benchmarks run beside ftserver (started by the bench itself).

- :mod:`.mosquitto`: a Mosquitto broker (Debian package) on 127.0.0.1 with a generated config.
- :mod:`.naive_subscriber`: "what users build instead": an aiomqtt subscriber behind Mosquitto
  that stores each segment as its own file and concatenates them at fin, as EMQX does.
- :mod:`.discard`: raw loopback TCP into a uvloop server that discards: the transport ceiling.
- :mod:`.http_upload`: the same files by HTTP PUT (resumable) to a small aiohttp server.
- :mod:`.concat`: a concatenate-at-fin assembly of one file, timed (the fin baseline).
"""
