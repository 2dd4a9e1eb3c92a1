"""A real DNS server for the tests, on a loopback UDP port: it answers A
queries for the names in a JSON file ({"name": ["127.0.0.2", ...]}), read
again at every query, so a test adds a Triton replica to a name by rewriting
the file - as Kubernetes adds a ready pod to a headless Service's answer.
Unknown names get NXDOMAIN, other record types an empty answer. Wire format
by dnspython, the library the gateway resolves with.

  python -m tests.dns_server --port 5353 --records records.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

TTL_S = 1


def answer(query_wire: bytes, records: dict[str, list[str]]) -> bytes:
    query = dns.message.from_wire(query_wire)
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    question = query.question[0]
    name = question.name.to_text(omit_final_dot=True).lower()
    if name not in records:
        response.set_rcode(dns.rcode.NXDOMAIN)
    elif question.rdtype == dns.rdatatype.A and records[name]:
        response.answer.append(dns.rrset.from_text_list(question.name, TTL_S, "IN", "A", records[name]))
    return response.to_wire()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, records_file: Path) -> None:
        self.records_file = records_file
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        records = {k.lower(): v for k, v in json.loads(self.records_file.read_text()).items()}
        try:
            self.transport.sendto(answer(data, records), addr)
        except Exception as exc:  # a malformed query is dropped, as a real server would
            print(f"dropped a query from {addr}: {exc}", flush=True)


async def serve(records_file: Path, port: int, host: str = "127.0.0.1") -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(records_file), local_addr=(host, port))
    return transport


async def _main(records_file: Path, port: int) -> None:
    await serve(records_file, port)
    print(f"dns server on 127.0.0.1:{port} answering from {records_file}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--records", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(_main(args.records, args.port))
