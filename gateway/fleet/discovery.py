"""Where the Triton replicas and the other gateways are: a fixed list, or a
DNS name that resolves to many addresses (a Kubernetes headless Service),
looked up again every few seconds so replicas that come and go are seen.

Three forms, for `RERANKER_TRITON_URL` and `RERANKER_GATEWAY_PEERS` alike:

  host:port[,host:port...]      fixed (peers: base URLs, http://host:port)
  dns:///name:port              every A/AAAA record of `name`, from the system resolver
  dns://server:port/name:port   the same, asked of that DNS server (tests run one on loopback)

gRPC's own target syntax is kept (`dns:///` with three slashes for the
system resolver), so an operator who knows one knows the other.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

DNS_SCHEME = "dns://"


@dataclass(frozen=True)
class DnsName:
    name: str
    port: int
    server: tuple[str, int] | None = None  # None: the system resolver


@dataclass(frozen=True)
class Targets:
    """A parsed target setting: either `fixed` entries or one DNS name."""

    fixed: tuple[str, ...] = ()
    dns: DnsName | None = None

    @property
    def describe(self) -> str:
        if self.dns is None:
            return ", ".join(self.fixed)
        where = f" at {self.dns.server[0]}:{self.dns.server[1]}" if self.dns.server else ""
        return f"dns {self.dns.name}:{self.dns.port}{where}"


def _split_host_port(value: str, what: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must be host:port, got {value!r}")
    return host.strip("[]"), int(port)


def parse_targets(value: str, urls: bool = False) -> Targets:
    """Parse one of the three forms; `urls`: fixed entries are base URLs (http://host:port)."""
    value = value.strip()
    if not value:
        return Targets()
    if value.startswith(DNS_SCHEME):
        authority, slash, name_port = value[len(DNS_SCHEME):].partition("/")
        if not slash:
            raise ValueError(f"expected dns:///name:port or dns://server:port/name:port, got {value!r}")
        name, port = _split_host_port(name_port, "the name after dns://")
        server = _split_host_port(authority if ":" in authority else f"{authority}:53", "the DNS server") \
            if authority else None
        return Targets(dns=DnsName(name, port, server))
    entries = tuple(entry.strip().rstrip("/") for entry in value.split(",") if entry.strip())
    for entry in entries:
        if urls:
            if not entry.startswith(("http://", "https://")):
                raise ValueError(f"each entry must be a base URL (http://host:port), got {entry!r}")
            _split_host_port(entry.split("://", 1)[1], "a URL's address")
        else:
            _split_host_port(entry, "each entry")
    return Targets(fixed=entries)


def host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets as gRPC and URLs want it."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


async def resolve(targets: Targets, timeout_s: float = 2.0) -> list[str]:
    """The current `host:port` entries (sorted). A failed look-up raises OSError (socket.gaierror,
    TimeoutError, or a DNS server's error), so a caller can keep what it had."""
    if targets.dns is None:
        return list(targets.fixed)
    name = targets.dns
    addresses = await (_ask_server(name, timeout_s) if name.server else _ask_system(name, timeout_s))
    return sorted({host_port(address, name.port) for address in addresses})


async def resolve_urls(targets: Targets, scheme: str = "http", timeout_s: float = 2.0) -> list[str]:
    """As `resolve`, for base URLs: fixed entries as given, DNS answers as scheme://address:port."""
    if targets.dns is None:
        return list(targets.fixed)
    return [f"{scheme}://{entry}" for entry in await resolve(targets, timeout_s)]


async def _ask_system(name: DnsName, timeout_s: float) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(name.name, name.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), timeout_s
    )
    return [info[4][0] for info in infos]


async def _ask_server(name: DnsName, timeout_s: float) -> list[str]:
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [name.server[0]]
    resolver.port = name.server[1]
    resolver.lifetime = timeout_s
    resolver.cache = None  # a replica that joins shows at the next look-up, not after the record's TTL
    found: list[str] = []
    for record_type in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(name.name, record_type, search=False)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            continue
        except dns.exception.DNSException as exc:  # a timeout, a server failure: one kind of error for callers
            raise OSError(f"asking {name.server[0]}:{name.server[1]} for {name.name}: {exc}") from None
        found.extend(record.address for record in answer)
    if not found:
        raise OSError(f"{name.name} has no A or AAAA record at {name.server[0]}:{name.server[1]}")
    return found
