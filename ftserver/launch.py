"""Starting the server: one process (``--workers 1``) or a supervisor with its workers.

The top of the process layers: ``__main__`` parses the command line and calls :func:`run`,
which picks the single-process :class:`~ftserver.server.Server` or the
:class:`~ftserver.supervisor.Supervisor`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
from pathlib import Path

from ftserver.config import Config, ConfigSource
from ftserver.server import Server, announce, new_runner, reload_done, setup_logging

log = logging.getLogger("ftserver")


def run(config: Config, source: ConfigSource) -> int:
    """Run the server until SIGTERM or SIGINT; returns the exit status.

    ``source`` (the config file and overrides) lets worker processes load the same
    configuration.
    """
    workers = config.server.worker_count
    setup_logging(config, "supervisor" if workers > 1 else 0)
    # a reload asked for while starting: the files are being read anyway (the handler that
    # reloads comes once the server runs)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if workers > 1:
        # prometheus-client's multiprocess mode: chosen by the environment before its first
        # import, in this process and in every worker (they inherit the variable)
        mdir = Path(config.server.data_dir) / "run" / "metrics"
        shutil.rmtree(mdir, ignore_errors=True)
        mdir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(mdir.absolute())
    with new_runner() as runner:
        if workers <= 1:
            return runner.run(_main(config))
        # only now: the supervisor imports prometheus-client (through ftserver.metrics), which
        # reads PROMETHEUS_MULTIPROC_DIR once, at its first import
        from ftserver.supervisor import Supervisor

        return runner.run(Supervisor(config, source).run())


async def _main(config: Config) -> int:
    server = Server(config)
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload_done(server.reload(), 1))
    assert server.mqtt_address is not None and server.http_address is not None
    announce(server.mqtt_address, server.http_address, server.data_dir, server.mqtts_address)
    log.info(
        "serving MQTT on port %d", server.mqtt_address[1], extra={"event": "started", "workers": 1}
    )
    await server.serve_until_stopped()
    return 0
