"""Finding Triton replicas and gateways: the three forms of a target setting,
and look-ups against a real DNS server on loopback (tests/dns_server.py) and
the system resolver."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from gateway.fleet import discovery
from gateway.settings import GatewaySettings
from launcher.process import free_ports
from tests import dns_server

pytestmark = pytest.mark.anyio


def test_the_three_forms_parse():
    assert discovery.parse_targets("triton:8101").fixed == ("triton:8101",)
    assert discovery.parse_targets(" a:1, b:2 ,").fixed == ("a:1", "b:2")
    assert discovery.parse_targets("dns:///reranker-triton:8101").dns == discovery.DnsName("reranker-triton", 8101)
    assert discovery.parse_targets("dns://127.0.0.1:5353/triton.test:8101").dns == discovery.DnsName(
        "triton.test", 8101, ("127.0.0.1", 5353))
    assert discovery.parse_targets("dns://10.0.0.10/triton:1").dns.server == ("10.0.0.10", 53)
    assert discovery.parse_targets("http://g-0:8000/, http://g-1:8000", urls=True).fixed == (
        "http://g-0:8000", "http://g-1:8000")


@pytest.mark.parametrize("value", ["no-port", "dns://triton:8101", "dns:///triton", "a:1,b", "host:99999"])
def test_malformed_targets_are_refused_naming_the_form(value):
    with pytest.raises(ValueError, match="host:port|dns:///name:port"):
        discovery.parse_targets(value)


def test_the_settings_check_every_address_setting():
    with pytest.raises(ValidationError, match="triton_url"):
        GatewaySettings(triton_url="dns:///no-port")
    with pytest.raises(ValidationError, match="gateway_peers"):
        GatewaySettings(gateway_peers="g-0:8000")  # a peer is a base URL
    with pytest.raises(ValidationError, match="advertised_url"):
        GatewaySettings(switch_coordinator="http://g-0:8000")
    settings = GatewaySettings(switch_coordinator="http://g-0:8000/", advertised_url="http://g-0:8000",
                               switch_poll_interval_s=1, peer_timeout_s=2)
    assert settings.is_coordinator and settings.catch_up_bound_s == 5
    assert not GatewaySettings(switch_coordinator="http://g-0:8000", advertised_url="http://g-1:8000").is_coordinator


async def test_a_name_resolves_to_every_address_a_real_dns_server_gives(tmp_path):
    records = tmp_path / "records.json"
    records.write_text(json.dumps({"triton.test": ["127.0.0.3", "127.0.0.2"]}))
    (port,) = free_ports(1)
    transport = await dns_server.serve(records, port)
    try:
        targets = discovery.parse_targets(f"dns://127.0.0.1:{port}/triton.test:8101")
        assert await discovery.resolve(targets) == ["127.0.0.2:8101", "127.0.0.3:8101"]
        # A replica joins: the next look-up sees it (no caching by the gateway).
        records.write_text(json.dumps({"triton.test": ["127.0.0.3", "127.0.0.2", "127.0.0.4"]}))
        assert await discovery.resolve(targets) == ["127.0.0.2:8101", "127.0.0.3:8101", "127.0.0.4:8101"]
        peers = discovery.parse_targets(f"dns://127.0.0.1:{port}/triton.test:8000", urls=True)
        assert (await discovery.resolve_urls(peers))[0] == "http://127.0.0.2:8000"
        with pytest.raises(OSError, match="no A or AAAA record"):
            await discovery.resolve(discovery.parse_targets(f"dns://127.0.0.1:{port}/unknown.test:1"))
    finally:
        transport.close()


async def test_the_system_resolver_is_used_for_dns_with_three_slashes():
    assert "127.0.0.1:9" in await discovery.resolve(discovery.parse_targets("dns:///localhost:9"))


async def test_an_unreachable_dns_server_is_an_os_error_so_callers_keep_what_they_had():
    (port,) = free_ports(1)  # nothing listens there
    with pytest.raises(OSError):
        await discovery.resolve(discovery.parse_targets(f"dns://127.0.0.1:{port}/triton.test:1"), timeout_s=0.3)
