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


def _answers(sock: socket.socket, wait: float) -> list[int]:
    statuses = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        data, _ = sock.recvfrom(65535)
        statuses.append(parse_message(data).status)
        if statuses[-1] >= 200:
            break
    return statuses


def test_every_torture_message_is_answered_or_dropped_and_calls_go_on(tmp_path: Path) -> None:
    with alg_process(tmp_path) as alg, sipp_uas("uas_sdp.xml", "127.0.0.20", tmp_path) as uas:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.10", 0))
            for path in sorted(TORTURE.glob("*.dat")):
                sock.sendto(path.read_bytes(), alg.inside)
                expected = EXPECTED_ANSWER.get(path.stem)
                statuses = _answers(sock, 1.0 if expected else 0.2)
                if expected is not None:
                    assert statuses and statuses[-1] == expected, (path.stem, statuses)
                assert all(100 <= s <= 699 for s in statuses), (path.stem, statuses)
        assert alg.process.poll() is None, alg.log.read_text()  # still running
        result = sipp_uac("uac_sdp.xml", uas, alg.inside, tmp_path, calls=10, rate=10)
    assert (result.returncode, result.successful, result.failed) == (0, 10, 0), result.output
    assert "Traceback" not in alg.log.read_text()
