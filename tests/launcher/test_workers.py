"""The worker supervisor's wiring, without starting workers: one port for all, a cluster on loopback with
worker 0 as its coordinator, and a peer key that the API keys accept as admin."""

from __future__ import annotations

import socket

import pytest
from pydantic import SecretStr, ValidationError

from gateway.api.auth import KeyRing, Scope
from gateway.settings import GatewaySettings
from launcher.workers import PEER_KEY_NAME, listening_sockets, worker_settings


def test_every_worker_socket_listens_on_the_one_port_and_each_takes_connections():
    sockets = listening_sockets("127.0.0.1", 0, 3)
    try:
        ports = {s.getsockname()[1] for s in sockets}
        assert len(ports) == 1
        port = ports.pop()
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
        accepted = 0
        for server in sockets:
            server.settimeout(0.2)
            try:
                while True:
                    server.accept()[0].close()
                    accepted += 1
            except TimeoutError:
                pass
        assert accepted == 60  # the kernel queued every connection on one of the sockets
        for client in clients:
            client.close()
    finally:
        for s in sockets:
            s.close()


def test_the_workers_form_one_cluster_with_worker_0_coordinating():
    workers = worker_settings(GatewaySettings(port=9000, default_model="bge"), [7001, 7002, 7003], "k" * 40)
    urls = [f"http://127.0.0.1:{p}" for p in (7001, 7002, 7003)]
    assert [w.worker_index for w in workers] == [0, 1, 2]
    assert {w.switch_coordinator for w in workers} == {urls[0]}
    assert [w.advertised_url for w in workers] == urls
    assert all(w.gateway_peers == ",".join(urls) for w in workers)
    assert [w.is_coordinator for w in workers] == [True, False, False]
    assert all(w.port == 9000 and w.default_model == "bge" and w.worker_count == 1 for w in workers)
    assert all(w.api_keys is None for w in workers)  # no keys: none added, every route stays open


def test_with_api_keys_the_peer_key_is_an_admin_key_beside_the_users_keys():
    settings = GatewaySettings(api_keys=SecretStr("user-secret-0123456789 score alice"))
    peer = "p" * 40
    (worker,) = worker_settings(settings, [7001], peer)
    ring = KeyRing.from_settings(worker)
    assert ring.find(peer).name == PEER_KEY_NAME and ring.find(peer).allows(Scope.ADMIN)
    assert ring.find("user-secret-0123456789").name == "alice"
    assert worker.peer_api_key.get_secret_value() == peer


def test_worker_count_auto_explicit_and_in_a_cluster_of_gateways(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert GatewaySettings().worker_count == 8
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert GatewaySettings().worker_count == 1
    assert GatewaySettings(workers=3).worker_count == 3
    cluster = {"switch_coordinator": "http://gw-0:8000", "advertised_url": "http://gw-1:8000"}
    assert GatewaySettings(**cluster).worker_count == 1
    with pytest.raises(ValidationError, match="workers"):
        GatewaySettings(workers=2, **cluster)
