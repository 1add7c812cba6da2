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


def _subscribers(tmp_path: Path, realm: str = "127.0.0.1") -> str:
    from alg.subscribers import SqliteSubscriberStore, Subscriber

    path = tmp_path / "subscribers.db"
    store = SqliteSubscriberStore(path)
    store.add(Subscriber.with_password("alice", realm, "secret", realm=realm))
    store.close()
    return str(path)


def _auth_toml(tmp_path: Path) -> str:
    return (
        f'[registrar]\ndatabase = "{tmp_path / "location.db"}"\n'
        f'[auth]\nrealm = "127.0.0.1"\nsubscribers = "{_subscribers(tmp_path)}"\n'
        # sipp 3.6 (like many phones) only does MD5 and takes the first challenge
        'algorithms = ["MD5"]\n'
    )


def test_register_with_digest_then_an_outside_call_reaches_the_registered_phone(
    tmp_path: Path,
) -> None:
    from labs.sipp_runner import free_port

    with alg_process(tmp_path, _auth_toml(tmp_path)) as alg:
        phone = ("127.0.0.11", free_port("127.0.0.11"))
        registered = sipp_uac(
            "uac_register.xml",
            alg.inside,
            alg.inside,
            tmp_path,
            calls=1,
            rate=1,
            service="alice",
            local=phone,
            extra=("-au", "alice", "-ap", "secret"),
        )
        assert (registered.returncode, registered.successful) == (0, 1), registered.output
        # the phone now answers at the contact it registered; a caller on the outside
        # reaches it through the ALG's outside interface, unchallenged (inbound)
        with sipp_uas("uas_sdp.xml", phone[0], tmp_path, port=phone[1]):
            caller = ("127.0.0.20", free_port("127.0.0.20"))
            result = sipp_uac(
                "uac_sdp.xml",
                alg.inside,
                alg.outside,
                tmp_path,
                calls=5,
                rate=5,
                service="alice",
                local=caller,
            )
    assert (result.returncode, result.successful, result.failed) == (0, 5, 0), result.output


def test_wrong_password_is_refused(tmp_path: Path) -> None:
    with alg_process(tmp_path, _auth_toml(tmp_path)) as alg:
        result = sipp_uac(
            "uac_register.xml",
            alg.inside,
            alg.inside,
            tmp_path,
            calls=1,
            rate=1,
            service="alice",
            extra=("-au", "alice", "-ap", "wrong"),
            timeout=10,
        )
    # the second REGISTER is challenged again instead of accepted
    assert (result.successful, result.failed) == (0, 1), result.output
    assert "401" in result.output


def test_outgoing_call_is_challenged_then_goes_through_with_credentials(tmp_path: Path) -> None:
    with (
        alg_process(tmp_path, _auth_toml(tmp_path)) as alg,
        sipp_uas("uas_sdp.xml", "127.0.0.20", tmp_path) as uas,
    ):
        # sipp hashes remote_ip:port as the digest uri unless given the Request-URI
        # (without the scheme: sipp adds "sip:")
        auth_uri = f"bob@{uas[0]}:{uas[1]}"
        result = sipp_uac(
            "uac_auth_sdp.xml",
            uas,
            alg.inside,
            tmp_path,
            calls=5,
            rate=5,
            extra=("-au", "alice", "-ap", "secret", "-auth_uri", auth_uri),
        )
    assert (result.returncode, result.successful, result.failed) == (0, 5, 0), result.output


def test_prefix_route_rewrites_digits_and_domain(tmp_path: Path) -> None:
    with sipp_uas("uas_sdp_rewritten.xml", "127.0.0.20", tmp_path) as gateway:
        routes = tmp_path / "routes.toml"
        routes.write_text(
            '[[route]]\nprefix = "1732"\nstrip = 1\ndomain = "regional.example"\n'
            f'next_hops = ["{gateway[0]}:{gateway[1]}"]\n'
        )
        with alg_process(tmp_path, f'[files]\nroutes = "{routes}"\n') as alg:
            result = sipp_uac(
                "uac_sdp.xml",
                alg.inside,
                alg.inside,
                tmp_path,
                calls=5,
                rate=5,
                service="17325551212",
            )
    assert (result.returncode, result.successful, result.failed) == (0, 5, 0), result.output


def test_calls_over_tcp_on_the_inside(tmp_path: Path) -> None:
    # the caller speaks TCP to the ALG; responses must come back on its connection
    # (RFC 3261 §18.2.2) while the ALG reaches the callee over UDP
    with alg_process(tmp_path) as alg, sipp_uas("uas_sdp.xml", "127.0.0.20", tmp_path) as uas:
        result = sipp_uac(
            "uac_sdp.xml", uas, alg.inside, tmp_path, calls=10, rate=10, extra=("-t", "t1")
        )
    assert (result.returncode, result.successful, result.failed) == (0, 10, 0), result.output


def test_route_table_reload_without_restart(tmp_path: Path) -> None:
    import contextlib

    from sipwall.cli import main as sipwall

    routes = tmp_path / "routes.toml"
    pid_file = tmp_path / "alg.pid"

    def route_to(gateway: tuple[str, int]) -> None:
        routes.write_text(
            '[[route]]\nprefix = "1732"\nstrip = 1\ndomain = "regional.example"\n'
            f'next_hops = ["{gateway[0]}:{gateway[1]}"]\n'
        )

    with contextlib.ExitStack() as stack:
        second = stack.enter_context(sipp_uas("uas_sdp_rewritten.xml", "127.0.0.21", tmp_path))
        with sipp_uas("uas_sdp_rewritten.xml", "127.0.0.20", tmp_path) as first:
            route_to(first)
            extra = f'[files]\nroutes = "{routes}"\npid = "{pid_file}"\n'
            alg = stack.enter_context(alg_process(tmp_path, extra))
            before = sipp_uac(
                "uac_sdp.xml",
                alg.inside,
                alg.inside,
                tmp_path,
                calls=2,
                rate=2,
                service="17325551212",
            )
            assert (before.returncode, before.successful) == (0, 2), before.output
            route_to(second)
            assert sipwall(["ctl", "reload", "--pid-file", str(pid_file)]) == 0
        # the first gateway is gone: calls can only succeed through the reloaded table
        deadline = time.monotonic() + 15
        while True:
            after = sipp_uac(
                "uac_sdp.xml",
                alg.inside,
                alg.inside,
                tmp_path,
                calls=1,
                rate=1,
                service="17325551212",
                timeout=8,
            )
            if after.successful == 1:
                break
            assert time.monotonic() < deadline, after.output
        assert "Traceback" not in alg.log.read_text()


def test_counters_of_the_running_alg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from sipwall.cli import main as sipwall

    pid_file, stats_file = tmp_path / "alg.pid", tmp_path / "stats.json"
    extra = (
        f'[files]\npid = "{pid_file}"\nstats = "{stats_file}"\n'
        "[ratelimit]\nenabled = true\ninvite = [1, 3]\n"
    )
    with alg_process(tmp_path, extra) as alg:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.10", 0))
            sock.sendto((TORTURE / "badinv01.dat").read_bytes(), alg.inside)
            assert _final_for(sock, _call_id((TORTURE / "badinv01.dat").read_bytes()), 2.0) == 400
            statuses = []
            for i in range(8):  # a burst of INVITEs from one source: some get 503
                # to our own domain: accepted ones are answered 404 (no such user),
                # so every 503 is the rate limiter's
                data = (
                    (TORTURE / "sdp01.dat")
                    .read_bytes()
                    .replace(b"sdp01.ndaksdj9342dasdd", f"burst-{i}".encode())
                    .replace(b"INVITE sip:user@example.com", b"INVITE sip:nobody@127.0.0.1")
                    .replace(b"branch=z9hG4bKkdjuw", f"branch=z9hG4bKburst{i}".encode())
                )
                sock.sendto(data, alg.inside)
                statuses.append(_final_for(sock, f"burst-{i}".encode(), 2.0))
        capsys.readouterr()
        assert (
            sipwall(["ctl", "stats", "--pid-file", str(pid_file), "--stats-file", str(stats_file)])
            == 0
        )
        counters = json.loads(capsys.readouterr().out)
    assert 503 in statuses and 404 in statuses
    assert set(statuses) <= {404, 503, None}  # None: dropped when far over the limit
    assert counters["proxy"]["malformed"] >= 1
    assert counters["proxy"]["ratelimit.rejected"] == statuses.count(503)
    assert counters["ratelimit"]["malformed"] >= 1
    # the collector policy (alg.main.collector_policy) runs: start-up objects are frozen
    assert counters["collector"]["frozen_objects"] > 10_000
    assert counters["collector"]["full_passes"] == 0
