"""Golden anchor rewrites: each directory here holds input.sdp, plan.json and expected.sdp.

`plan.json` describes an `AnchorPlan`: {"media": {"<index>": {"address", "rtp_port",
"rtcp_port", "port_count"}}, "origin_address", "session_address", "strip_ice",
"description"}. Expectations are hand-checked and committed; to rewrite them after an
intended change run `SIPWALL_REGEN_GOLDEN=1 pytest tests/golden/sdp` and review the diff.
"""

from __future__ import annotations

import json
import os
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from alg.sdp import AnchorPlan, MediaAnchor, anchor, parse_sdp

CASES_DIR = Path(__file__).parent
CASES = sorted(path.name for path in CASES_DIR.iterdir() if (path / "input.sdp").is_file())
REGENERATE = os.environ.get("SIPWALL_REGEN_GOLDEN", "") not in {"", "0"}


def load_plan(raw: dict[str, Any]) -> AnchorPlan:
    def address(value: str | None) -> Any:
        return None if value is None else ip_address(value)

    media = {
        int(index): MediaAnchor(
            ip_address(entry["address"]),
            entry["rtp_port"],
            entry.get("rtcp_port"),
            entry.get("port_count"),
        )
        for index, entry in raw.get("media", {}).items()
    }
    return AnchorPlan(
        media=media,
        origin_address=address(raw.get("origin_address")),
        session_address=address(raw.get("session_address")),
        strip_ice=bool(raw.get("strip_ice", False)),
    )


def test_the_required_cases_exist() -> None:
    required = {
        "plain_audio",
        "audio_video",
        "rtcp_mux",
        "rtcp_attribute",
        "hold_sendonly",
        "hold_inactive",
        "hold_zero_address",
        "port_zero_stream",
        "ice_stripped",
        "ipv6",
        "ipv4_to_ipv6",
        "session_c_one_of_two_anchored",
    }
    assert required <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_golden_anchor(case: str) -> None:
    directory = CASES_DIR / case
    body = (directory / "input.sdp").read_bytes()
    plan = load_plan(json.loads((directory / "plan.json").read_text()))
    sdp = parse_sdp(body)
    assert sdp.to_bytes() == body  # the input itself round-trips
    output = anchor(sdp, plan).to_bytes()
    expected_path = directory / "expected.sdp"
    if REGENERATE:
        expected_path.write_bytes(output)
    assert output == expected_path.read_bytes()
    # The output is itself valid SDP with the same m-lines, and stable under re-anchoring.
    again = parse_sdp(output)
    assert [m.media_line.media for m in again.media] == [m.media_line.media for m in sdp.media]
    assert anchor(again, plan).to_bytes() == output
