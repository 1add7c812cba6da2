"""The running ALG process between real sipp peers on loopback (RFC 3261 proxying)."""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path

import pytest

from alg.sip import parse_message
from labs.sipp_runner import alg_process, sipp_uac, sipp_uas

pytestmark = [pytest.mark.peers, pytest.mark.slow]

TORTURE = Path(__file__).parents[2] / "data" / "rfc4475"


def test_calls_through_the_alg(tmp_path: Path) -> None:
    with alg_process(tmp_path) as alg, sipp_uas("uas_sdp.xml", "127.0.0.20", tmp_path) as uas:
        result = sipp_uac("uac_sdp.xml", uas, alg.inside, tmp_path, calls=30, rate=30)
    assert (result.returncode, result.successful, result.failed) == (0, 30, 0), result.output


def test_stateless_mode_calls(tmp_path: Path) -> None:
    with (
        alg_process(tmp_path, mode="stateless") as alg,
        sipp_uas("uas_sdp.xml", "127.0.0.20", tmp_path) as uas,
    ):
        result = sipp_uac("uac_sdp.xml", uas, alg.inside, tmp_path, calls=20, rate=20)
    assert (result.returncode, result.successful, result.failed) == (0, 20, 0), result.output


def test_retransmissions_under_loss_are_absorbed(tmp_path: Path) -> None:
    # the UAC loses 10 % of what it sends and receives: INVITEs and BYEs are
    # retransmitted, responses are resent by the proxy's server transactions
    with alg_process(tmp_path) as alg, sipp_uas("uas_sdp.xml", "127.0.0.20", tmp_path) as uas:
        result = sipp_uac(
            "uac_sdp.xml", uas, alg.inside, tmp_path, calls=30, rate=15, extra=("-lost", "10")
        )
    assert (result.successful, result.failed) == (30, 0), result.output
    assert "Retrans" in result.output


def test_busy_486_is_acked_and_relayed(tmp_path: Path) -> None:
    with alg_process(tmp_path) as alg, sipp_uas("uas_busy.xml", "127.0.0.20", tmp_path) as uas:
        result = sipp_uac("uac_busy.xml", uas, alg.inside, tmp_path, calls=10, rate=10)
    assert (result.returncode, result.successful, result.failed) == (0, 10, 0), result.output


def test_cancel_after_ringing(tmp_path: Path) -> None:
    with alg_process(tmp_path) as alg, sipp_uas("uas_cancel.xml", "127.0.0.20", tmp_path) as uas:
        result = sipp_uac("uac_cancel.xml", uas, alg.inside, tmp_path, calls=10, rate=10)
    assert (result.returncode, result.successful, result.failed) == (0, 10, 0), result.output


def test_forking_to_two_contacts_best_answer_wins(tmp_path: Path) -> None:
    with (
        sipp_uas("uas_busy.xml", "127.0.0.20", tmp_path) as busy,
        sipp_uas("uas_sdp.xml", "127.0.0.21", tmp_path) as answers,
    ):
        users = (
            f'[users]\nfork = ["sip:fork@{busy[0]}:{busy[1]}", '
            f'"sip:fork@{answers[0]}:{answers[1]}"]\n'
        )
        with alg_process(tmp_path, users) as alg:
            result = sipp_uac(
                "uac_sdp.xml", answers, alg.inside, tmp_path, calls=10, rate=10, service="fork"
            )
    assert (result.returncode, result.successful, result.failed) == (0, 10, 0), result.output


# what the running proxy must answer to each torture request (None: anything, or nothing)
EXPECTED_ANSWER = {
    "badinv01": 400, "clerr": 400, "ncl": 400, "scalar02": 400, "quotbal": 400,
    "ltgtruri": 400, "lwsruri": 400, "lwsstart": 400, "trws": 400, "escruri": 400,
    "regbadct": 400, "badaspec": 400, "baddn": 400, "badvers": 505, "mismatch01": 400,
    "mismatch02": 400, "insuf": 400, "unkscm": 416, "novelsc": 416, "multi01": 400,
    "mcl01": 400, "zeromf": 483, "bext01": 420,
}  # fmt: skip


def _call_id(data: bytes) -> bytes:
    for line in data.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"call-id", b"i"):
            return value.strip()
    return b""


def _final_for(sock: socket.socket, call_id: bytes, wait: float) -> int | None:
    """The final status answering `call_id` (other answers, late ones of earlier
    messages, are skipped)."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            return None
        data, _ = sock.recvfrom(65535)
        response = parse_message(data)
        assert 100 <= response.status <= 699
        # insuf (RFC 4475 §3.3.1) has no Call-ID, and neither has our 400 for it
        answered = response.header("call-id") or ""
        if response.status >= 200 and answered.encode() == call_id:
            return response.status
    return None


def test_every_torture_message_is_answered_or_dropped_and_calls_go_on(tmp_path: Path) -> None:
    with alg_process(tmp_path) as alg, sipp_uas("uas_sdp.xml", "127.0.0.20", tmp_path) as uas:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.10", 0))
            for path in sorted(TORTURE.glob("*.dat")):
                data = path.read_bytes()
                sock.sendto(data, alg.inside)
                expected = EXPECTED_ANSWER.get(path.stem)
                if expected is not None:
                    assert _final_for(sock, _call_id(data), 2.0) == expected, path.stem
        assert alg.process.poll() is None, alg.log.read_text()  # still running
        result = sipp_uac("uac_sdp.xml", uas, alg.inside, tmp_path, calls=10, rate=10)
    assert (result.returncode, result.successful, result.failed) == (0, 10, 0), result.output
    assert "Traceback" not in alg.log.read_text()
