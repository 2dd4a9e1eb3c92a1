"""Several gateway worker processes on one port (`RERANKER_WORKERS`).

One Python process answers ~1,000-2,000 requests/s; a GPU scores several
times that in single pairs. So `reranker gateway` starts N workers, each a
whole gateway (its own app, event loop and gRPC channels), and leaves the
kernel to spread the connections: every worker has its own listening socket
on the same address and port (SO_REUSEPORT), bound here before any worker
starts, so a worker that dies and comes back finds its socket - and the
connections queued on it - where it left it.

The workers agree on the active model as a cluster of gateways does
(gateway/fleet/cluster.py), on loopback: each also listens on a private
127.0.0.1 port for the calls between gateways, worker 0 is the switch
coordinator, and a `/switch_model` that reaches another worker is forwarded
to it. No state lives here: this process only binds, starts, restarts and
stops. The peer key the workers send each other is made here, per start, and
joins the API keys (as an admin key named `gateway-workers`) when keys are on.

Metrics add up across workers through prometheus_client's multiprocess mode:
each worker writes its series to files in one folder made here
(`PROMETHEUS_MULTIPROC_DIR`), and `/metrics` on any worker reads them all.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading

from pydantic import SecretStr

from gateway.api.auth import KeyRing
from gateway.settings import GatewaySettings
from launcher.process import Supervised

log = logging.getLogger(__name__)

SETTINGS_ENV = "RERANKER_WORKER_SETTINGS"  # the worker's whole settings, as JSON
SOCKETS_ENV = "RERANKER_WORKER_SOCKETS"  # the descriptors of its public and internal listening sockets
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name for the multiprocess folder
PEER_KEY_NAME = "gateway-workers"
BACKLOG = 4096  # connections the kernel queues per worker socket: a thousand clients connecting at once


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets on one address and port, each with SO_REUSEPORT: the kernel spreads new connections
    over them. Port 0: the first one's port, chosen by the kernel, for all."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        port = sock.getsockname()[1]
        sock.listen(BACKLOG)
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets


def worker_settings(settings: GatewaySettings, internal_ports: list[int], peer_key: str) -> list[GatewaySettings]:
    """Each worker's settings: the given ones, made one cluster of gateways on loopback."""
    urls = [f"http://127.0.0.1:{port}" for port in internal_ports]
    api_keys = settings.api_keys
    if KeyRing.from_settings(settings):  # keys are on: the internal routes need an admin key
        given = api_keys.get_secret_value() + ";" if api_keys is not None else ""
        api_keys = SecretStr(f"{given}{peer_key} admin {PEER_KEY_NAME}")
    return [
        settings.model_copy(update={
            "worker_index": index, "switch_coordinator": urls[0], "advertised_url": url,
            "gateway_peers": ",".join(urls), "peer_api_key": SecretStr(peer_key), "api_keys": api_keys,
        })
        for index, url in enumerate(urls)
    ]


def _as_json(settings: GatewaySettings) -> str:
    values = {name: getattr(settings, name) for name in type(settings).model_fields}
    return json.dumps({name: value.get_secret_value() if isinstance(value, SecretStr) else value
                       for name, value in values.items()}, default=str)


def run(settings: GatewaySettings) -> int:
    """Start `settings.worker_count` (> 1) workers and supervise them until SIGINT or SIGTERM."""
    count = settings.worker_count
    public = listening_sockets(settings.host, settings.port, count)
    internal = [listening_sockets("127.0.0.1", 0, 1)[0] for _ in range(count)]  # a port each
    internal_ports = [sock.getsockname()[1] for sock in internal]
    metrics_dir = tempfile.mkdtemp(prefix="reranker-metrics-")
    peer_key = secrets.token_urlsafe(32)
    env = {**os.environ, METRICS_DIR_ENV: metrics_dir}
    stopping = threading.Event()

    def stop(signum, frame) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    workers: list[Supervised] = []
    try:
        from prometheus_client import multiprocess

        for index, worker in enumerate(worker_settings(settings, internal_ports, peer_key)):
            fds = (public[index].fileno(), internal[index].fileno())
            workers.append(Supervised(
                [sys.executable, "-m", "launcher.workers"],
                {**env, SETTINGS_ENV: _as_json(worker), SOCKETS_ENV: ",".join(map(str, fds))},
                pass_fds=fds, name=f"gateway worker {index}",
                # A dead worker's live gauges (in flight, active model) leave the sums; its counters stay.
                on_exit=lambda pid: multiprocess.mark_process_dead(pid, metrics_dir),
            ))
        log.info("%d gateway workers on %s:%d (internal ports %s)", count, settings.host,
                 public[0].getsockname()[1], internal_ports)
        stopping.wait()
    finally:
        log.info("stopping %d gateway workers", len(workers))
        threads = [threading.Thread(target=worker.stop) for worker in workers]  # each waits for its drain
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for sock in public + internal:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def serve_worker() -> None:
    """A worker process: the settings and listening sockets its supervisor handed down."""
    import uvicorn

    from gateway.app import create_app

    settings = GatewaySettings(**json.loads(os.environ.pop(SETTINGS_ENV)))
    sockets = [socket.socket(fileno=int(fd)) for fd in os.environ.pop(SOCKETS_ENV).split(",")]
    # access_log=False: the gateway writes its own access line (gateway.access), with the trace id and the
    # key's name, and never the key.
    config = uvicorn.Config(create_app(settings), log_level=settings.log_level, access_log=False,
                            timeout_graceful_shutdown=settings.drain_timeout_s)
    uvicorn.Server(config).run(sockets=sockets)


if __name__ == "__main__":
    serve_worker()
