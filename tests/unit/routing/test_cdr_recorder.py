"""Call detail records: dispositions, forking, expiry, JSON lines and the writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from alg.cdr import CallRecorder, Cdr, CdrWriter, Disposition

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def start(rec: CallRecorder, call_id: str = "c1", side: str = "inside") -> None:
    rec.invite(call_id, "sip:alice@our.example", "sip:bob@biloxi.example.com", side, T0)


def test_answered_call() -> None:
    rec = CallRecorder()
    start(rec)
    assert rec.response("c1", 100, T0 + 0.1) is None
    assert rec.response("c1", 180, T0 + 1, to_tag="t1") is None
    assert rec.response("c1", 200, T0 + 5, to_tag="t1") is None
    rec.ack("c1", T0 + 5.1)
    cdr = rec.bye("c1", T0 + 65.5, tags=("from-a", "t1"))
    assert cdr == Cdr(
        call_id="c1",
        caller="sip:alice@our.example",
        callee="sip:bob@biloxi.example.com",
        side="inside",
        start=T0,
        answer=T0 + 5,
        end=T0 + 65.5,
        disposition=Disposition.ANSWERED,
        status=200,
        ended_by="bye",
        early_dialogs=1,
        confirmed=True,
    )
    assert cdr.duration == pytest.approx(60.5)
    assert len(rec) == 0
    assert rec.bye("c1", T0 + 70) is None  # retransmitted BYE: already recorded


@pytest.mark.parametrize(
    ("status", "disposition"),
    [
        (486, Disposition.BUSY),
        (600, Disposition.BUSY),
        (480, Disposition.NO_ANSWER),
        (408, Disposition.NO_ANSWER),
        (487, Disposition.CANCELLED),
        (404, Disposition.FAILED),
        (503, Disposition.FAILED),
        (302, Disposition.FAILED),
    ],
)
def test_failure_dispositions(status: int, disposition: Disposition) -> None:
    rec = CallRecorder()
    start(rec)
    rec.response("c1", 180, T0 + 1, to_tag="t1")
    cdr = rec.response("c1", status, T0 + 20)
    assert cdr is not None
    assert (cdr.disposition, cdr.status, cdr.ended_by) == (disposition, status, "final")
    assert (cdr.answer, cdr.end, cdr.duration) == (None, T0 + 20, 0.0)


def test_cancelled_call_ends_at_487() -> None:
    rec = CallRecorder()
    start(rec)
    rec.response("c1", 180, T0 + 1, to_tag="t1")
    rec.cancel("c1", T0 + 8)
    cdr = rec.response("c1", 487, T0 + 8.2)
    assert cdr is not None
    assert (cdr.disposition, cdr.end) == (Disposition.CANCELLED, T0 + 8.2)


def test_cancelled_call_stays_cancelled_whatever_the_final_status() -> None:
    rec = CallRecorder()
    start(rec, "c1")
    rec.cancel("c1", T0 + 2)
    cdr = rec.response("c1", 480, T0 + 2.5)  # a UAS that answers CANCEL sloppily
    assert cdr is not None
    assert (cdr.disposition, cdr.status) == (Disposition.CANCELLED, 480)
    start(rec, "c2")
    rec.cancel("c2", T0 + 2)
    cdr = rec.timeout("c2", T0 + 34)  # no 487 ever came
    assert cdr is not None
    assert cdr.disposition is Disposition.CANCELLED


def test_cancel_crossing_a_200_leaves_the_call_answered() -> None:
    rec = CallRecorder()
    start(rec)
    rec.response("c1", 200, T0 + 3, to_tag="t1")
    rec.cancel("c1", T0 + 3.01)  # too late (RFC 3261 §9.1): no effect
    assert rec.response("c1", 487, T0 + 3.1) is None
    cdr = rec.bye("c1", T0 + 10)
    assert cdr is not None
    assert cdr.disposition is Disposition.ANSWERED


def test_forked_call_one_fork_answers_losing_dialog_bye_ignored() -> None:
    rec = CallRecorder()
    start(rec, side="outside")
    rec.response("c1", 180, T0 + 1, to_tag="desk")
    rec.response("c1", 183, T0 + 1.5, to_tag="mobile")
    rec.response("c1", 180, T0 + 2, to_tag="desk")  # same early dialog again
    rec.response("c1", 200, T0 + 4, to_tag="mobile")
    rec.response("c1", 200, T0 + 4.2, to_tag="desk")  # second 2xx: another dialog
    assert rec.response("c1", 486, T0 + 4.3) is None  # a late failure changes nothing
    # the caller tears down the desk dialog (RFC 3261 §13.2.2.4): not the end of the call
    assert rec.bye("c1", T0 + 4.5, tags=("a", "desk")) is None
    cdr = rec.bye("c1", T0 + 34, tags=("mobile", "a"))  # the callee hangs up
    assert cdr is not None
    assert (cdr.disposition, cdr.side, cdr.early_dialogs) == (
        Disposition.ANSWERED,
        "outside",
        2,
    )
    assert cdr.duration == pytest.approx(30)


def test_no_answer_by_timeout_and_answered_call_timing_out() -> None:
    rec = CallRecorder()
    start(rec, "c1")
    start(rec, "c2")
    cdr = rec.timeout("c1", T0 + 32)
    assert cdr is not None
    assert (cdr.disposition, cdr.status, cdr.ended_by) == (Disposition.NO_ANSWER, 408, "timeout")
    rec.response("c2", 200, T0 + 2, to_tag="x")
    cdr = rec.timeout("c2", T0 + 1800)  # session timer expired (RFC 4028)
    assert cdr is not None
    assert (cdr.disposition, cdr.ended_by, cdr.duration) == (
        Disposition.ANSWERED,
        "timeout",
        1798,
    )


def test_bye_before_answer_is_ignored() -> None:
    rec = CallRecorder()
    start(rec)
    assert rec.bye("c1", T0 + 1) is None
    assert "c1" in rec


def test_calls_that_never_end_expire() -> None:
    rec = CallRecorder(max_setup=120, max_duration=3600)
    assert rec.get_timer() is None
    start(rec, "ringing-forever")
    rec.invite("up-forever", "sip:a@x", "sip:b@y", "inside", T0 + 10)
    rec.response("up-forever", 200, T0 + 20, to_tag="t")
    assert rec.get_timer() == T0 + 120
    assert rec.expire(T0 + 119) == []
    [ringing] = rec.expire(T0 + 500)
    assert (ringing.call_id, ringing.disposition, ringing.end, ringing.ended_by) == (
        "ringing-forever",
        Disposition.NO_ANSWER,
        T0 + 120,
        "expired",
    )
    # the answered call's setup deadline is stale: its new deadline is answer + 3600
    assert rec.get_timer() == T0 + 3620
    [up] = rec.expire(T0 + 99_999)
    assert (up.disposition, up.end, up.duration) == (Disposition.ANSWERED, T0 + 3620, 3600)
    assert rec.get_timer() is None
    assert len(rec) == 0


def test_unknown_calls_and_retransmitted_invites_are_harmless() -> None:
    rec = CallRecorder()
    assert rec.response("nope", 200, T0) is None
    assert rec.timeout("nope", T0) is None
    rec.ack("nope", T0)
    rec.cancel("nope", T0)
    rec.set_media("nope", {"x": 1})
    start(rec)
    rec.invite("c1", "sip:mallory@x", "sip:bob@y", "outside", T0 + 1)
    cdr = rec.response("c1", 486, T0 + 2)
    assert cdr is not None
    assert (cdr.caller, cdr.start) == ("sip:alice@our.example", T0)


def test_media_field_and_json_line() -> None:
    rec = CallRecorder()
    start(rec)
    rec.response("c1", 200, T0 + 2.5, to_tag="t")
    media = {"bindings": [{"public": "203.0.113.1:40000"}], "packets": 1500, "bytes": 258000}
    rec.set_media("c1", media)
    cdr = rec.bye("c1", T0 + 62.5)
    assert cdr is not None
    assert cdr.to_json() == (
        '{"answer":"2023-11-14T22:13:22.500Z","call_id":"c1","callee":"sip:bob@biloxi.example.com",'
        '"caller":"sip:alice@our.example","confirmed":false,"disposition":"ANSWERED",'
        '"duration":60.0,"early_dialogs":0,"end":"2023-11-14T22:14:22.500Z","ended_by":"bye",'
        '"media":{"bindings":[{"public":"203.0.113.1:40000"}],"bytes":258000,"packets":1500},'
        '"reason":null,"side":"inside","start":"2023-11-14T22:13:20.000Z","status":200}'
    )
    with pytest.raises(TypeError):
        cdr.media["packets"] = 0  # type: ignore[index]


def test_recorder_validates_limits() -> None:
    with pytest.raises(ValueError, match="positive"):
        CallRecorder(max_setup=0)


def test_recorder_validates_media_wait() -> None:
    with pytest.raises(ValueError, match="positive"):
        CallRecorder(media_wait=0)


def _answered_and_hung_up(rec: CallRecorder, call_id: str = "c1", end: float = T0 + 60) -> Cdr:
    start(rec, call_id)
    rec.response(call_id, 200, T0 + 2, to_tag="t1")
    cdr = rec.bye(call_id, end)
    assert cdr is not None
    return cdr


def test_a_closing_record_is_ready_once_its_media_arrives() -> None:
    rec = CallRecorder(media_wait=10)
    rec.await_media(_answered_and_hung_up(rec), T0 + 60)
    assert (rec.closing_count, rec.take_ready()) == (1, [])
    assert rec.get_timer() == T0 + 70
    rec.set_media("c1", {"packets": 3000, "bytes": 516000})
    (cdr,) = rec.take_ready()
    assert (cdr.end, cdr.ended_by, dict(cdr.media)) == (
        T0 + 60,
        "bye",
        {"packets": 3000, "bytes": 516000},
    )
    assert rec.take_ready() == [] and rec.closing_count == 0
    assert rec.get_timer() is None  # nothing left to wait for
    assert rec.expire(T0 + 1000) == []
    rec.set_media("c1", {"packets": 1})  # a duplicate comes too late: dropped
    assert rec.take_ready() == [] and len(rec) == 0


def test_a_closing_record_without_media_is_written_at_the_deadline_and_says_so() -> None:
    rec = CallRecorder(media_wait=10)
    rec.await_media(_answered_and_hung_up(rec), T0 + 60)
    assert rec.expire(T0 + 69.9) == []
    (cdr,) = rec.expire(T0 + 70)
    assert dict(cdr.media) == {"error": "no release report from the agent within 10 s"}
    assert (cdr.end, cdr.disposition) == (T0 + 60, Disposition.ANSWERED)
    assert rec.closing_count == 0 and rec.get_timer() is None
    rec.set_media("c1", {"packets": 5})  # after the deadline: the record is gone
    assert rec.take_ready() == []


def test_records_of_one_call_id_take_their_media_in_order() -> None:
    # a call challenged by the upstream (407) is retried with the same Call-ID (§22.2):
    # two records, two releases, reported in the order they were made
    rec = CallRecorder(media_wait=10)
    start(rec)
    first = rec.response("c1", 407, T0 + 0.5)
    assert first is not None
    rec.await_media(first, T0 + 0.5)
    second = _answered_and_hung_up(rec, end=T0 + 30)
    rec.await_media(second, T0 + 30)
    assert rec.closing_count == 2
    rec.set_media("c1", {"bindings": ["offer"]})
    (ready,) = rec.take_ready()
    assert (ready.status, dict(ready.media)) == (407, {"bindings": ["offer"]})
    assert rec.get_timer() == T0 + 40  # the first one's deadline no longer counts
    (late,) = rec.expire(T0 + 40)
    assert (late.status, late.end, sorted(late.media)) == (200, T0 + 30, ["error"])


def test_media_for_a_call_in_progress_goes_into_its_record() -> None:
    rec = CallRecorder(media_wait=10)
    start(rec)
    rec.set_media("c1", {"packets": 7})
    cdr = rec.response("c1", 486, T0 + 3)
    assert cdr is not None and dict(cdr.media) == {"packets": 7}


def test_closing_records_stay_bounded_under_load() -> None:
    rec = CallRecorder(media_wait=5)
    written: list[Cdr] = []
    for i in range(2000):  # 100 calls/s for 20 s; every other one gets its media
        now = T0 + i * 0.01
        rec.await_media(_answered_and_hung_up(rec, f"c{i}", end=now), now)
        if i % 2:
            rec.set_media(f"c{i}", {"packets": i})
        written += rec.expire(now)
        assert rec.closing_count <= 5 / 0.01 / 2 + 1  # those of the last media_wait only
        assert len(rec._closing_order) <= 5 / 0.01 + 1  # tombstones included
    written += rec.take_ready() + rec.expire(T0 + 100)
    assert len(written) == 2000 and len({cdr.call_id for cdr in written}) == 2000
    assert sum("error" in cdr.media for cdr in written) == 1000
    assert rec.closing_count == 0
    assert rec.get_timer() is None and len(rec) == 0
    assert not rec._closing and not rec._closing_order  # no tombstones left behind


def test_close_hands_out_what_still_waits_for_media() -> None:
    rec = CallRecorder(media_wait=10)
    rec.await_media(_answered_and_hung_up(rec, "c1"), T0 + 60)
    rec.await_media(_answered_and_hung_up(rec, "c2"), T0 + 60)
    rec.set_media("c1", {"packets": 1})
    (stopped,) = rec.close()
    assert stopped.call_id == "c2"
    assert dict(stopped.media) == {"error": "the ALG stopped before the release was reported"}
    assert [cdr.call_id for cdr in rec.take_ready()] == ["c1"]
    assert rec.closing_count == 0 and rec.get_timer() is None


def _cdr(call_id: str) -> Cdr:
    rec = CallRecorder()
    rec.invite(call_id, "sip:a@x", "sip:b@y", "inside", T0)
    cdr = rec.response(call_id, 486, T0 + 1)
    assert cdr is not None
    return cdr


def test_writer_appends_json_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    path = tmp_path / "cdr.jsonl"
    path.write_text('{"earlier":true}\n')
    with CdrWriter(path, fsync="interval", fsync_interval=10) as writer:
        writer.write(_cdr("a"), now=0)  # first write syncs
        writer.write(_cdr("b"), now=5)  # within the interval: no fsync
        assert len(synced) == 1
        writer.write(_cdr("c"), now=10)
        assert len(synced) == 2
        writer.write(_cdr("d"), now=11)
        writer.sync(now=12)
        assert len(synced) == 3
        writer.sync(now=13)  # nothing new
        assert len(synced) == 3
    lines = path.read_text().splitlines()
    assert lines[0] == '{"earlier":true}'
    assert [json.loads(line)["call_id"] for line in lines[1:]] == ["a", "b", "c", "d"]
    assert {json.loads(line)["disposition"] for line in lines[1:]} == {"BUSY"}


@pytest.mark.parametrize(("policy", "expected"), [("always", 2), ("never", 0)])
def test_writer_fsync_policies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str, expected: int
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    writer = CdrWriter(tmp_path / "cdr.jsonl", fsync=policy)  # type: ignore[arg-type]
    writer.write(_cdr("a"), now=0)
    writer.write(_cdr("b"), now=0)
    writer.close()
    assert len(synced) == expected
    with pytest.raises(ValueError, match="fsync policy"):
        CdrWriter(tmp_path / "x", fsync="sometimes")  # type: ignore[arg-type]


def test_writer_reopens_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "cdr.jsonl"
    with CdrWriter(path, fsync="never") as writer:
        writer.write(_cdr("a"), now=0)
        path.rename(tmp_path / "cdr.jsonl.1")
        writer.reopen()
        writer.write(_cdr("b"), now=1)
    assert json.loads(path.read_text())["call_id"] == "b"
    assert json.loads((tmp_path / "cdr.jsonl.1").read_text())["call_id"] == "a"
