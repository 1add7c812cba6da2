"""Sealed topology-hiding tokens (alg.media.masking.TokenTable): AES-SIV, RFC 5297.

A token carries its text, so it restores with the key alone: after any number of other
tokens (the LRU it replaces evicted live dialogs past 100,000 entries) and in another
table with the same secret (an ALG restarted with `[media] secret_file`). Anything that
is not a token we sealed under that key and kind restores to nothing and never raises."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import string
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alg.media import masking
from alg.media.masking import TOKEN_PREFIX, TOKEN_RE, TokenTable

SECRET = b"s" * 32
NOW = 1_700_000_000.0
BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
TEXTS = {
    "uri": "sip:alice@10.77.0.10:5060;transport=udp",
    "host": "[fd00:77::10]:5060",
    "cid": "a84b4c76e66710@10.77.0.10",
}


def test_every_kind_round_trips_and_only_as_its_own_kind() -> None:
    table = TokenTable(SECRET)
    for kind, text in TEXTS.items():
        token = table.token(text, NOW, kind)
        assert table.restore(token, NOW, kind) == text
        for other in TEXTS.keys() - {kind}:
            assert table.restore(token, NOW, other) is None, (kind, other)


def test_tokens_are_deterministic_lowercase_base32_and_hide_the_text() -> None:
    table = TokenTable(SECRET)
    text = TEXTS["uri"]
    token = table.token(text, NOW, "uri")
    assert token == table.token(text, NOW + 7200.0, "uri")  # one token for the dialog
    assert token != table.token(text, NOW, "cid")
    assert token.startswith(TOKEN_PREFIX) and set(token[3:]) <= set(BASE32)
    assert TOKEN_RE.fullmatch(token) is not None
    assert "10.77" not in token and "alice" not in token
    # 16 bytes of synthetic IV plus the text, in base32 without padding
    assert len(token) == 3 + -(-(16 + len(text)) * 8 // 5)


def test_a_table_with_the_same_secret_restores_the_tokens_of_another() -> None:
    """The restart case: the provider still holds the masked Contact, the new process
    must restore it."""
    before = TokenTable(SECRET)
    tokens = {kind: before.token(text, NOW, kind) for kind, text in TEXTS.items()}
    after = TokenTable(bytes(SECRET))
    for kind, token in tokens.items():
        assert after.restore(token, NOW + 86_400.0, kind) == TEXTS[kind]
    stranger = TokenTable(b"t" * 32)
    for kind, token in tokens.items():
        assert stranger.restore(token, NOW, kind) is None
        assert stranger.token(TEXTS[kind], NOW, kind) != token


def test_an_early_token_still_restores_after_more_than_100000_others() -> None:
    """Fails on the LRU this replaced (capacity 100,000): the early dialog was evicted."""
    table = TokenTable(SECRET)
    call_id = table.token("cid\x00c1@10.77.0.10", NOW)
    contact = table.token("uri\x00sip:alice@10.77.0.10:5060", NOW)
    for n in range(100_001):
        table.token(f"cid\x00{n}@10.77.0.11", NOW + n * 0.01)
    later = NOW + 3 * 3600.0  # and a long call: well past the old 2 h TTL
    assert table.restore(call_id, later) == "cid\x00c1@10.77.0.10"
    assert table.restore(contact, later) == "uri\x00sip:alice@10.77.0.10:5060"


def _changed(token: str, index: int) -> str:
    char = token[index]
    return token[:index] + BASE32[(BASE32.index(char) + 1) % 32] + token[index + 1 :]


def test_tampered_truncated_and_extended_tokens_restore_to_nothing() -> None:
    table = TokenTable(SECRET)
    token = table.token(TEXTS["cid"], NOW, "cid")
    for index in range(len(TOKEN_PREFIX), len(token)):
        assert table.restore(_changed(token, index), NOW, "cid") is None, index
    for cut in range(1, len(token)):
        assert table.restore(token[:-cut], NOW, "cid") is None, cut
    for tail in ("a", "aa", "q" * 8, "a" * 5000):
        assert table.restore(token + tail, NOW, "cid") is None
    assert table.restore(token.upper(), NOW, "cid") is None  # not our encoding
    assert table.restore("xx-" + token[3:], NOW, "cid") is None
    assert table.restore(token[:10] + "0" + token[11:], NOW, "cid") is None  # not base32
    assert table.restore(token[:10] + "_" + token[11:], NOW, "cid") is None  # int() would


def test_restore_all_keeps_foreign_and_broken_tokens_verbatim() -> None:
    table = TokenTable(SECRET)
    token = table.token(TEXTS["cid"], NOW, "cid")
    foreign = TokenTable(b"t" * 32).token(TEXTS["cid"], NOW, "cid")
    text = (
        f"a {token} b {_changed(token, 20)} c {token[:-1]} d {token}q e {foreign} "
        f"f sw-aaaaaaaaaaaaaaaa g sw-{'a' * 40} h sw-{'b' * 5000} i sw- j"
    )
    restored = table.restore_all(text, NOW, "cid")
    assert restored == text.replace(f"a {token} b", f"a {TEXTS['cid']} b", 1)


def test_over_long_candidates_cost_no_decryption() -> None:
    """A token longer than any text we seal could give is refused before it is decoded:
    a megabyte of base32 is no slower than a short forgery."""
    table = TokenTable(SECRET)
    huge = TOKEN_PREFIX + "a" * 1_000_000
    started = time.perf_counter()
    for _ in range(100):
        assert table.restore(huge, NOW) is None
    assert time.perf_counter() - started < 0.5
    assert table.restore_all(f"x {huge} y", NOW) == f"x {huge} y"
    assert TOKEN_RE.search(huge) is None


def test_text_length_is_bounded_and_the_bound_fits_the_token_pattern() -> None:
    table = TokenTable(SECRET)
    longest = "x" * masking.MAX_TEXT_BYTES
    token = table.token(longest, NOW, "uri")
    assert len(token) == masking.MAX_TOKEN_CHARS
    assert TOKEN_RE.fullmatch(token) is not None
    assert table.restore(token, NOW, "uri") == longest
    with pytest.raises(masking.TokenTooLong):
        table.token(longest + "x", NOW, "uri")
    with pytest.raises(masking.TokenTooLong):  # bytes count, not characters
        table.token("é" * (masking.MAX_TEXT_BYTES // 2 + 1), NOW, "uri")
    empty = table.token("", NOW, "cid")
    assert len(empty) == masking.MIN_TOKEN_CHARS and table.restore(empty, NOW, "cid") == ""


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        TokenTable(b"x" * 15)


def test_the_token_key_is_not_the_group_key() -> None:
    """key() (group ids, agent choice) stays what it was, and is stable across tables with
    the same secret: changing the tokens must not move any call to another agent."""
    a, b = TokenTable(SECRET), TokenTable(SECRET)
    assert a.key("c1@10.77.0.10", "a1") == b.key("c1@10.77.0.10", "a1")
    assert a.key("c1@10.77.0.10", "a1") != TokenTable(b"t" * 32).key("c1@10.77.0.10", "a1")
    assert a.key("c1@10.77.0.10", "a1") != a.key("c1@10.77.0.10", "a2")
    # HMAC-SHA256 keyed by the secret, as it always was (group ids, agent choice)
    joined = b"key\x00c1@10.77.0.10\x00a1"
    assert a.key("c1@10.77.0.10", "a1") == hmac.new(SECRET, joined, hashlib.sha256).digest()
    assert a.key("c1@10.77.0.10", "a1") == a.key("c1@10.77.0.10", "a1")  # the keyed MAC reused


# Any text, lone surrogates included (the wire's undecodable bytes arrive as surrogate
# escapes), up to the bound.
_any_text = st.text(st.characters(blacklist_categories=()), max_size=120)
_kinds = st.sampled_from(("uri", "host", "cid", ""))


@settings(max_examples=300, deadline=None)
@given(text=_any_text, kind=_kinds)
def test_any_text_round_trips(text: str, kind: str) -> None:
    table = TokenTable(SECRET)
    token = table.token(text, NOW, kind)
    assert TOKEN_RE.fullmatch(token) is not None
    assert table.restore(token, NOW, kind) == text
    assert TokenTable(SECRET).restore(token, NOW, kind) == text
    assert table.restore_all(f"<{token}>", NOW, kind) == f"<{text}>"


@settings(max_examples=300, deadline=None)
@given(
    body=st.text(alphabet=BASE32 + string.ascii_uppercase + "0189-._=", max_size=900),
    junk=st.text(max_size=40),
    kind=_kinds,
)
def test_random_sw_text_is_never_restored_and_never_raises(body: str, junk: str, kind: str) -> None:
    table = TokenTable(SECRET)
    candidate = TOKEN_PREFIX + body
    assert table.restore(candidate, NOW, kind) is None
    text = f"{junk}{candidate} {junk}"
    assert table.restore_all(text, NOW, kind) == text


def test_token_pattern_takes_whole_runs_only() -> None:
    table = TokenTable(SECRET)
    token = table.token(TEXTS["cid"], NOW, "cid")
    assert [m.group(0) for m in TOKEN_RE.finditer(f"{token}@x;{token}>")] == [token] * 2
    assert TOKEN_RE.search(token + "a" * (masking.MAX_TOKEN_CHARS - len(token) + 1)) is None
    assert re.fullmatch(r"sw-[a-z2-7]+", token)


class _CountingSiv:
    """Stands in for the table's AESSIV and counts what it is asked to do."""

    def __init__(self, siv: object) -> None:
        self.siv = siv
        self.encrypts = self.decrypts = 0

    def encrypt(self, data: bytes, associated: list[bytes]) -> bytes:
        self.encrypts += 1
        return self.siv.encrypt(data, associated)  # type: ignore[attr-defined, no-any-return]

    def decrypt(self, data: bytes, associated: list[bytes]) -> bytes:
        self.decrypts += 1
        return self.siv.decrypt(data, associated)  # type: ignore[attr-defined, no-any-return]


@pytest.mark.interpreted_only  # replaces an attribute of the compiled TokenTable
def test_repeats_are_answered_from_the_memo_without_sealing_again() -> None:
    table = TokenTable(SECRET)
    siv = table._siv = _CountingSiv(table._siv)  # type: ignore[assignment]
    token = table.token(TEXTS["cid"], NOW, "cid")
    assert table.token(TEXTS["cid"], NOW + 1.0, "cid") == token
    assert table.restore(token, NOW, "cid") == TEXTS["cid"]  # one we made: no decryption
    assert (siv.encrypts, siv.decrypts) == (1, 0)
    assert table.restore(token, NOW, "uri") is None  # the memo does not skip the kind check
    assert siv.decrypts == 1
    other = TokenTable(SECRET).token(TEXTS["uri"], NOW, "uri")  # made by another process
    assert table.restore(other, NOW, "uri") == TEXTS["uri"]
    assert table.restore(other, NOW, "uri") == TEXTS["uri"]
    assert siv.decrypts == 2  # opened once, then remembered
    forged = _changed(other, 30)
    assert table.restore(forged, NOW, "uri") is None
    assert table.restore(forged, NOW, "uri") is None
    assert siv.decrypts == 4  # a failure is never remembered


def test_the_memo_is_bounded_and_a_cleared_memo_changes_no_answer() -> None:
    table = TokenTable(SECRET)
    first = table.token("cid\x00first@10.77.0.10", NOW, "cid")
    tokens = [table.token(f"{n}@10.77.0.11", NOW, "cid") for n in range(masking.MEMO_ENTRIES + 5)]
    assert len(table._sealed) <= masking.MEMO_ENTRIES
    assert len(table._opened) <= masking.MEMO_ENTRIES
    assert table.token("cid\x00first@10.77.0.10", NOW, "cid") == first
    assert table.restore(first, NOW, "cid") == "cid\x00first@10.77.0.10"
    assert table.restore(tokens[0], NOW, "cid") == "0@10.77.0.11"


def test_the_base32_encoder_is_rfc_4648_unpadded_lowercase() -> None:
    for size in range(1, 90):
        data = bytes((size * 37 + i * 101) % 256 for i in range(size))
        encoded = masking._base32_encode(data)
        assert encoded == base64.b32encode(data).decode("ascii").rstrip("=").lower()
        assert masking._base32_decode(encoded) == data
