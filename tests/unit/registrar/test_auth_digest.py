"""Digest authentication: RFC test vectors, parsing, challenges, nonces, replays."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alg.auth import (
    Algorithm,
    Authenticated,
    AuthFailure,
    Cause,
    Challenge,
    DigestAuthenticator,
    DigestCredentials,
    DigestPolicy,
    Identity,
    PasswordCredentials,
    Role,
    compute_ha1,
    compute_response,
    parse_credentials,
)
from alg.errors import DigestParseError, SipParseError
from alg.sip import SipMessage, parse_message

T0 = 1_700_000_000.0
REALM = "example.com"
KEY = b"k" * 32
USERS = PasswordCredentials({("alice", REALM): "secret", ("bob", REALM): "hunter2"})

# --- RFC test vectors -----------------------------------------------------------------


def test_rfc2617_section_3_5_md5() -> None:
    ha1 = compute_ha1(Algorithm.MD5, "Mufasa", "testrealm@host.com", "Circle Of Life")
    response = compute_response(
        Algorithm.MD5,
        ha1,
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "GET",
        "/dir/index.html",
        "auth",
        "00000001",
        "0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        (Algorithm.MD5, "8ca523f5e9506fed4657c9700eebdbec"),
        (Algorithm.SHA256, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1(algorithm: Algorithm, expected: str) -> None:
    ha1 = compute_ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
    response = compute_response(
        algorithm, ha1, RFC7616_NONCE, "GET", "/dir/index.html", "auth", "00000001", RFC7616_CNONCE
    )
    assert response == expected


def test_rfc2617_example_header_parses() -> None:
    creds = parse_credentials(
        'Digest username="Mufasa",\r\n realm="testrealm@host.com",'
        ' nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html",'
        ' qop=auth, nc=00000001, cnonce="0a4f113b",'
        ' response="6629fae49393a05397450978507c4ef1",'
        ' opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert creds == DigestCredentials(
        username="Mufasa",
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        uri="/dir/index.html",
        response="6629fae49393a05397450978507c4ef1",
        cnonce="0a4f113b",
        nc="00000001",
        qop="auth",
        opaque="5ccc069c403ebaf9f0171e9517f40e41",
    )


# --- parsing --------------------------------------------------------------------------

BASE = 'username="a", realm="r", nonce="n", uri="sip:r", response="x"'


def test_escapes_unknown_params_and_case() -> None:
    creds = parse_credentials(
        'DIGEST username="a\\"b\\\\c" , realm = "r,1", nonce="n", uri="sip:r",'
        ' response="x", future-param="ignored", algorithm=SHA-256,,'
    )
    assert creds is not None
    assert (creds.username, creds.realm, creds.algorithm) == ('a"b\\c', "r,1", "SHA-256")


@pytest.mark.parametrize(
    "value",
    [
        "NoOneKnowsThisScheme opaque-data=here",  # RFC 4475 §3.3.7 regaut01
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        "",
        "Digestive " + BASE,
        '"Digest" ' + BASE,
    ],
)
def test_other_schemes_are_no_credentials(value: str) -> None:
    assert parse_credentials(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "Digest",  # nothing at all
        'Digest username="a"',  # required parameters missing
        "Digest " + BASE + ', username="b"',  # duplicate
        "Digest " + BASE + ", qop=auth",  # qop without nc/cnonce
        "Digest " + BASE + ', qop=auth, nc=1, cnonce="c"',  # nc not 8 hex digits
        'Digest username="a',  # unterminated quoted string
        "Digest username",  # no '='
        "Digest " + BASE + ' junk="x" more',  # missing comma
        "Digest =x, " + BASE,  # empty name
    ],
)
def test_malformed_digest_raises_our_error(value: str) -> None:
    with pytest.raises(DigestParseError) as info:
        parse_credentials(value)
    assert info.value.status == 400


@given(st.binary(max_size=300))
def test_any_bytes_parse_to_none_credentials_or_our_error(data: bytes) -> None:
    for candidate in (data, b"Digest " + data):
        try:
            result = parse_credentials(candidate)
        except DigestParseError:
            continue
        assert result is None or isinstance(result, DigestCredentials)


# --- a digest client for the tests ----------------------------------------------------


def request(
    authorization: str | None = None,
    *,
    header: str = "Authorization",
    method: str = "REGISTER",
    ruri: str = "sip:example.com",
) -> SipMessage:
    lines = [
        f"{method} {ruri} SIP/2.0",
        "Via: SIP/2.0/UDP 10.77.0.10:5060;branch=z9hG4bK-auth",
        "To: <sip:alice@example.com>",
        "From: <sip:alice@example.com>;tag=1",
        "Call-ID: auth-1",
        f"CSeq: 1 {method}",
    ]
    if authorization is not None:
        lines.append(f"{header}: {authorization}")
    lines.append("Content-Length: 0")
    return parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())


def challenge_params(value: bytes) -> dict[str, str]:
    return {
        k.lower(): v.strip('"')
        for k, v in re.findall(r'([\w-]+)=("[^"]*"|[^,\s]+)', value.decode())
    }


def answer(
    challenge: Challenge,
    *,
    user: str = "alice",
    password: str = "secret",
    nc: int = 1,
    index: int = 0,
    method: str = "REGISTER",
    uri: str = "sip:example.com",
    realm: str | None = None,
) -> str:
    params = challenge_params(challenge.headers[index][1])
    algorithm = Algorithm.named(params["algorithm"])
    assert algorithm is not None
    realm = realm or params["realm"]
    ha1 = compute_ha1(algorithm, user, realm, password)
    nc_text = f"{nc:08x}"
    response = compute_response(
        algorithm, ha1, params["nonce"], method, uri, "auth", nc_text, "0a4f113b"
    )
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{params["nonce"]}", '
        f'uri="{uri}", response="{response}", algorithm={algorithm.value}, '
        f'qop=auth, nc={nc_text}, cnonce="0a4f113b"'
    )


def counter_bytes() -> Callable[[int], bytes]:
    state = {"n": 0}

    def token_bytes(n: int) -> bytes:
        state["n"] += 1
        return state["n"].to_bytes(n, "big")

    return token_bytes


@pytest.fixture
def auth() -> DigestAuthenticator:
    return DigestAuthenticator(USERS, [KEY], token_bytes=counter_bytes())


# --- challenges -----------------------------------------------------------------------


def test_challenge_offers_sha256_then_md5(auth: DigestAuthenticator) -> None:
    result = auth.verify(request(), REALM, T0)
    assert isinstance(result, Challenge)
    assert (result.status, result.reason, result.cause) == (
        401,
        "Unauthorized",
        Cause.NO_CREDENTIALS,
    )
    names = [name for name, _ in result.headers]
    assert names == ["WWW-Authenticate", "WWW-Authenticate"]
    first, second = (challenge_params(v) for _, v in result.headers)
    assert (first["algorithm"], second["algorithm"]) == ("SHA-256", "MD5")
    assert first["realm"] == REALM and first["qop"] == "auth"
    assert b'qop="auth"' in result.headers[0][1]
    assert b"stale" not in result.headers[0][1]


def test_proxy_role_uses_407_and_proxy_headers() -> None:
    proxy = DigestAuthenticator(USERS, [KEY], role=Role.PROXY)
    result = proxy.verify(request(method="INVITE", ruri="sip:bob@example.net"), REALM, T0)
    assert isinstance(result, Challenge)
    assert (result.status, result.headers[0][0]) == (407, "Proxy-Authenticate")
    good = answer(result, method="INVITE", uri="sip:bob@example.net")
    # credentials in Authorization are not for a proxy
    wrong_header = request(good, method="INVITE", ruri="sip:bob@example.net")
    assert isinstance(proxy.verify(wrong_header, REALM, T0), Challenge)
    right = request(good, header="Proxy-Authorization", method="INVITE", ruri="sip:bob@example.net")
    assert proxy.verify(right, REALM, T0) == Authenticated(
        Identity("alice", REALM), Algorithm.SHA256
    )


# --- verification ---------------------------------------------------------------------


@pytest.mark.parametrize(("index", "algorithm"), [(0, Algorithm.SHA256), (1, Algorithm.MD5)])
def test_good_credentials_authenticate(
    auth: DigestAuthenticator, index: int, algorithm: Algorithm
) -> None:
    challenge = auth.verify(request(), REALM, T0)
    assert isinstance(challenge, Challenge)
    result = auth.verify(request(answer(challenge, index=index)), REALM, T0 + 1)
    assert result == Authenticated(Identity("alice", REALM), algorithm)


def test_wrong_password_is_challenged_again(auth: DigestAuthenticator) -> None:
    challenge = auth.challenge(REALM, T0)
    result = auth.verify(request(answer(challenge, password="guess")), REALM, T0 + 1)
    assert isinstance(result, Challenge)
    assert (result.status, result.cause, result.stale) == (401, Cause.BAD_RESPONSE, False)


def test_unknown_user_is_challenged_again(auth: DigestAuthenticator) -> None:
    challenge = auth.challenge(REALM, T0)
    result = auth.verify(request(answer(challenge, user="mallory")), REALM, T0 + 1)
    assert isinstance(result, Challenge) and result.cause is Cause.UNKNOWN_USER


def test_replayed_nonce_count_is_refused(auth: DigestAuthenticator) -> None:
    challenge = auth.challenge(REALM, T0)
    first = request(answer(challenge, nc=1))
    assert isinstance(auth.verify(first, REALM, T0 + 1), Authenticated)
    replay = auth.verify(first, REALM, T0 + 2)
    assert isinstance(replay, Challenge) and replay.cause is Cause.REPLAY
    assert not replay.stale
    # the next count is fine, and so is a late one inside the window, once
    assert isinstance(auth.verify(request(answer(challenge, nc=3)), REALM, T0 + 3), Authenticated)
    late = request(answer(challenge, nc=2))
    assert isinstance(auth.verify(late, REALM, T0 + 3), Authenticated)
    again = auth.verify(late, REALM, T0 + 4)
    assert isinstance(again, Challenge) and again.cause is Cause.REPLAY


def test_count_below_the_window_is_refused() -> None:
    auth = DigestAuthenticator(USERS, [KEY], policy=DigestPolicy(nc_window=4))
    challenge = auth.challenge(REALM, T0)
    assert isinstance(auth.verify(request(answer(challenge, nc=10)), REALM, T0), Authenticated)
    assert isinstance(auth.verify(request(answer(challenge, nc=7)), REALM, T0), Authenticated)
    too_old = auth.verify(request(answer(challenge, nc=6)), REALM, T0)
    assert isinstance(too_old, Challenge) and too_old.cause is Cause.REPLAY
    zero = auth.verify(request(answer(challenge, nc=0)), REALM, T0)
    assert isinstance(zero, Challenge) and zero.cause is Cause.REPLAY


def test_expired_nonce_is_stale_only_with_the_right_password(auth: DigestAuthenticator) -> None:
    challenge = auth.challenge(REALM, T0)
    later = T0 + auth.policy.nonce_lifetime + 1
    stale = auth.verify(request(answer(challenge)), REALM, later)
    assert isinstance(stale, Challenge)
    assert (stale.cause, stale.stale) == (Cause.STALE_NONCE, True)
    assert all(b"stale=TRUE" in value for _, value in stale.headers)
    wrong = auth.verify(request(answer(challenge, password="guess")), REALM, later)
    assert isinstance(wrong, Challenge) and not wrong.stale
    # the fresh nonce from the stale challenge works
    assert isinstance(auth.verify(request(answer(stale)), REALM, later + 1), Authenticated)


def test_nonce_is_still_fresh_at_its_lifetime(auth: DigestAuthenticator) -> None:
    challenge = auth.challenge(REALM, T0)
    at_limit = T0 + auth.policy.nonce_lifetime
    assert isinstance(auth.verify(request(answer(challenge)), REALM, at_limit), Authenticated)


def test_forged_and_foreign_nonces_are_refused(auth: DigestAuthenticator) -> None:
    other = DigestAuthenticator(USERS, [b"o" * 32])
    foreign = auth.verify(request(answer(other.challenge(REALM, T0))), REALM, T0)
    assert isinstance(foreign, Challenge) and foreign.cause is Cause.BAD_NONCE
    # a nonce issued for another realm does not verify for this one
    elsewhere = auth.challenge("other.example", T0)
    moved = auth.verify(request(answer(elsewhere, realm=REALM)), REALM, T0)
    assert isinstance(moved, Challenge) and moved.cause is Cause.BAD_NONCE
    # garbage and future-dated nonces
    creds = answer(auth.challenge(REALM, T0)).replace('nonce="', 'nonce="x', 1)
    assert isinstance(auth.verify(request(creds), REALM, T0), Challenge)
    future = auth.challenge(REALM, T0 + 3600)
    result = auth.verify(request(answer(future)), REALM, T0)
    assert isinstance(result, Challenge) and result.cause is Cause.BAD_NONCE


def test_key_rotation_keeps_recent_nonces(auth: DigestAuthenticator) -> None:
    before = auth.challenge(REALM, T0)
    auth.rotate_key(b"n" * 32)
    assert isinstance(auth.verify(request(answer(before)), REALM, T0 + 1), Authenticated)
    for i in range(auth.policy.max_keys):
        auth.rotate_key(bytes([i]) * 32)
    gone = auth.verify(request(answer(before, nc=2)), REALM, T0 + 2)
    assert isinstance(gone, Challenge) and gone.cause is Cause.BAD_NONCE
    with pytest.raises(ValueError):
        auth.rotate_key(b"short")


def test_unknown_scheme_regaut01_is_challenged(rfc4475: Callable[[str], SipMessage]) -> None:
    auth = DigestAuthenticator(USERS, [KEY])
    result = auth.verify(rfc4475("regaut01"), REALM, T0)
    assert isinstance(result, Challenge) and result.cause is Cause.NO_CREDENTIALS


def test_credentials_for_another_realm_are_ignored(auth: DigestAuthenticator) -> None:
    challenge = auth.challenge("upstream.example", T0)
    result = auth.verify(request(answer(challenge)), REALM, T0)
    assert isinstance(result, Challenge) and result.cause is Cause.NO_CREDENTIALS


def test_several_credentials_pick_our_realm(auth: DigestAuthenticator) -> None:
    ours = answer(auth.challenge(REALM, T0))
    theirs = ours.replace(f'realm="{REALM}"', 'realm="upstream.example"')
    msg = request(theirs)
    raw = msg.raw.replace(
        b"Content-Length", b"Authorization: " + ours.encode() + b"\r\nContent-Length"
    )
    assert isinstance(auth.verify(parse_message(raw), REALM, T0), Authenticated)


@pytest.mark.parametrize(
    ("edit", "cause"),
    [
        (lambda c: c.replace("algorithm=SHA-256", "algorithm=MD5-sess"), Cause.UNSUPPORTED),
        (lambda c: c.replace("qop=auth", "qop=auth-int"), Cause.UNSUPPORTED),
        (lambda c: c + ", userhash=true", Cause.UNSUPPORTED),
    ],
)
def test_unsupported_variants_are_challenged(
    auth: DigestAuthenticator, edit: Callable[[str], str], cause: Cause
) -> None:
    creds = edit(answer(auth.challenge(REALM, T0)))
    result = auth.verify(request(creds), REALM, T0)
    assert isinstance(result, Challenge) and result.cause is cause


def test_only_offered_algorithms_are_accepted() -> None:
    sha_only = DigestAuthenticator(
        USERS, [KEY], policy=DigestPolicy(algorithms=(Algorithm.SHA256,))
    )
    challenge = DigestAuthenticator(USERS, [KEY]).challenge(REALM, T0)
    result = sha_only.verify(request(answer(challenge, index=1)), REALM, T0)
    assert isinstance(result, Challenge) and result.cause is Cause.UNSUPPORTED
    assert len(sha_only.challenge(REALM, T0).headers) == 1


def test_digest_uri_must_name_the_request_uri(auth: DigestAuthenticator) -> None:
    creds = answer(auth.challenge(REALM, T0), uri="sip:elsewhere.example")
    assert auth.verify(request(creds), REALM, T0) == AuthFailure(400, "Digest URI Mismatch")
    # the same URI written differently (host case) is accepted
    same = answer(auth.challenge(REALM, T0), uri="sip:EXAMPLE.com")
    assert isinstance(auth.verify(request(same), REALM, T0), Authenticated)


def test_malformed_credentials_are_400(auth: DigestAuthenticator) -> None:
    result = auth.verify(request('Digest username="alice'), REALM, T0)
    assert isinstance(result, AuthFailure) and result.status == 400


def test_eviction_never_reopens_a_replay() -> None:
    auth = DigestAuthenticator(USERS, [KEY], policy=DigestPolicy(max_tracked_nonces=1))
    a = auth.challenge(REALM, T0)
    b = auth.challenge(REALM, T0 + 1)
    assert isinstance(auth.verify(request(answer(a, nc=1)), REALM, T0 + 2), Authenticated)
    assert isinstance(
        auth.verify(request(answer(b, nc=1)), REALM, T0 + 2), Authenticated
    )  # evicts a
    replay = auth.verify(request(answer(a, nc=1)), REALM, T0 + 3)
    assert isinstance(replay, Challenge)
    assert (replay.cause, replay.stale) == (Cause.STALE_NONCE, True)


def test_purge_forgets_only_stale_nonces(auth: DigestAuthenticator) -> None:
    challenge = auth.challenge(REALM, T0)
    assert isinstance(auth.verify(request(answer(challenge)), REALM, T0), Authenticated)
    assert auth.purge(T0 + 10) == 0
    assert auth.purge(T0 + auth.policy.nonce_lifetime + 1) == 1


def test_authenticator_validates_keys_and_policy() -> None:
    with pytest.raises(ValueError):
        DigestAuthenticator(USERS, [])
    with pytest.raises(ValueError):
        DigestAuthenticator(USERS, [b"short"])
    with pytest.raises(ValueError):
        DigestPolicy(nonce_lifetime=0)


def test_realm_with_quote_is_escaped_in_challenge(auth: DigestAuthenticator) -> None:
    result = auth.challenge('odd"realm', T0)
    assert result.headers[0][1].startswith(b'Digest realm="odd\\"realm"')
    creds = parse_credentials(
        "Digest "
        + result.headers[0][1].decode()[7:]
        + ', username="u", uri="sip:x", response="r", nc=00000001, cnonce="c"'
    )
    assert creds is not None and creds.realm == 'odd"realm'


_HEADER_TEXT = st.binary(max_size=200).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").strip(b" \t")
)


@given(_HEADER_TEXT)
def test_verify_never_raises_on_any_authorization_value(value: bytes) -> None:
    auth = DigestAuthenticator(USERS, [KEY])
    raw = request().raw.replace(
        b"Content-Length", b"Authorization: " + value + b"\r\nContent-Length"
    )
    try:
        msg = parse_message(raw)
    except SipParseError:
        return
    result = auth.verify(msg, REALM, T0)
    assert isinstance(result, Challenge | AuthFailure)
