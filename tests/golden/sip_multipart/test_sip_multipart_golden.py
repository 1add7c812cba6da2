"""Golden: anchoring the SDP inside a multipart SIP body (RFC 5621).

Each directory holds input.sip, plan.json (an AnchorPlan as in tests/golden/sdp) and
expected.sip. Only the SDP part may change; the other parts, boundaries and part headers
stay byte-identical and Content-Length follows. Regenerate after an intended change with
`SIPWALL_REGEN_GOLDEN=1 pytest tests/golden/sip_multipart` and review the diff.
"""

from __future__ import annotations

import json
import os
from ipaddress import ip_address
from pathlib import Path

import pytest

from alg.sdp import AnchorPlan, MediaAnchor, anchor, parse_sdp
from alg.sip import MessageEditor, check_request, find_sdp, parse_message

CASES_DIR = Path(__file__).parent
CASES = sorted(path.name for path in CASES_DIR.iterdir() if (path / "input.sip").is_file())
REGENERATE = os.environ.get("SIPWALL_REGEN_GOLDEN", "") not in {"", "0"}


def load_plan(path: Path) -> AnchorPlan:
    raw = json.loads(path.read_text())
    media = {
        int(index): MediaAnchor(
            ip_address(entry["address"]),
            entry["rtp_port"],
            entry.get("rtcp_port"),
            entry.get("port_count"),
        )
        for index, entry in raw["media"].items()
    }
    origin = raw.get("origin_address")
    return AnchorPlan(
        media=media,
        origin_address=ip_address(origin) if origin else None,
        strip_ice=bool(raw.get("strip_ice")),
    )


def test_cases_exist() -> None:
    assert CASES


@pytest.mark.parametrize("case", CASES)
def test_multipart_anchor(case: str) -> None:
    directory = CASES_DIR / case
    data = (directory / "input.sip").read_bytes()
    msg = parse_message(data)
    check_request(msg)
    location = find_sdp(msg)
    assert location is not None
    sdp = anchor(parse_sdp(location.extract(msg.body)), load_plan(directory / "plan.json"))
    edit = MessageEditor(msg)
    edit.set_body(location.replace(msg.body, sdp.to_bytes()))
    output = edit.apply()
    expected_path = directory / "expected.sip"
    if REGENERATE:
        expected_path.write_bytes(output)
    assert output == expected_path.read_bytes()
    # what changed is the SDP part and Content-Length, nothing else
    out = parse_message(output)
    check_request(out)
    new_location = find_sdp(out)
    assert new_location is not None
    assert out.body[: new_location.start] == msg.body[: location.start]
    assert out.body[new_location.end :] == msg.body[location.end :]
    assert b"10.77.0.10" not in new_location.extract(out.body)
    assert out.header("content-length") == str(len(out.body))
