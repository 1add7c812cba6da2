"""A lab DNS server: A and SRV records for the names it is given, nothing else.

Run inside a lab namespace, on a lab address, so that a daemon under test can resolve
lab names (RFC 3263 next hops, say) without any query leaving the lab:

    python -m labs.dns_server --listen 198.51.100.10 --record provider.example=198.51.100.10 \
        --srv _sips._tcp.provider.example=10,5,5061,provider.example

A query for a known name and another type (NAPTR, AAAA) gets an empty answer (NOERROR,
no data: the name exists); an unknown name gets NXDOMAIN. Each query is
printed as `query <name> <type>` (flushed), so a test can see what was asked; the line
`listening` says the socket is bound.
"""

from __future__ import annotations

import argparse
import socket

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

TTL = 60


def answer(
    query: bytes, records: dict[str, str], services: dict[str, str] | None = None
) -> bytes | None:
    """The response to one query datagram; None for what is not a DNS query. `records`:
    name -> IPv4 address; `services`: name -> SRV data ("priority weight port target")."""
    services = services or {}
    try:
        request = dns.message.from_wire(query)
    except Exception:  # noqa: BLE001 - anything undecodable is ignored, as a server does
        return None
    response = dns.message.make_response(request)
    for question in request.question:
        name = question.name.to_text(omit_final_dot=True).lower()
        print(f"query {name} {dns.rdatatype.to_text(question.rdtype)}", flush=True)
        if name not in records and name not in services:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A and name in records:
            response.answer.append(
                dns.rrset.from_text(question.name, TTL, "IN", "A", records[name])
            )
        elif question.rdtype == dns.rdatatype.SRV and name in services:
            response.answer.append(
                dns.rrset.from_text(question.name, TTL, "IN", "SRV", services[name] + ".")
            )
    return response.to_wire()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="address to serve on (port 53)")
    parser.add_argument("--record", action="append", default=[], help="name=IPv4 address")
    parser.add_argument(
        "--srv", action="append", default=[], help="name=priority,weight,port,target"
    )
    args = parser.parse_args()
    records = {}
    for record in args.record:
        name, _, address = record.partition("=")
        records[name.lower().rstrip(".")] = address
    services = {}
    for service in args.srv:
        name, _, data = service.partition("=")
        services[name.lower().rstrip(".")] = " ".join(data.split(","))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.listen, 53))
    print("listening", flush=True)
    while True:
        data, peer = sock.recvfrom(4096)
        reply = answer(data, records, services)
        if reply is not None:
            sock.sendto(reply, peer)


if __name__ == "__main__":
    main()
