"""Builders shared by the registrar, location and auth tests (exposed as fixtures)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from alg.sip import SipMessage, parse_message

RFC4475 = Path(__file__).parents[2] / "data" / "rfc4475"
T0 = 1_700_000_000.0  # a virtual clock's epoch (POSIX seconds)

RegisterBuilder = Callable[..., SipMessage]


def build_register(
    *,
    contacts: Sequence[str] = (),
    expires: int | str | None = None,
    call_id: str = "reg-1@10.77.0.10",
    cseq: int = 1,
    to: str = "<sip:alice@example.com>",
    ruri: str = "sip:example.com",
    extra: Sequence[str] = (),
    method: str = "REGISTER",
) -> SipMessage:
    lines = [
        f"{method} {ruri} SIP/2.0",
        "Via: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bK-reg-" + str(cseq) + ";rport",
        "Max-Forwards: 70",
        f"To: {to}",
        "From: <sip:alice@example.com>;tag=ft-1",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "User-Agent: test-phone/1.0",
    ]
    lines += [f"Contact: {c}" for c in contacts]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines += list(extra)
    lines.append("Content-Length: 0")
    return parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())


@pytest.fixture
def register() -> RegisterBuilder:
    return build_register


@pytest.fixture
def rfc4475() -> Callable[[str], SipMessage]:
    def load(name: str) -> SipMessage:
        return parse_message((RFC4475 / f"{name}.dat").read_bytes())

    return load
