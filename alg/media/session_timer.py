"""Session timers (RFC 4028) as far as the media anchor needs them.

A call's pinholes must not outlive the call, and the ALG cannot see RTP: the session
interval is what tells it the call is still alive. So (RFC 4028 §8, proxy behaviour):

* An INVITE or UPDATE that carries no Session-Expires gets one (`insert_request`, §8.1:
  "a proxy MAY insert a Session-Expires"), never below its Min-SE (§8.1).
* A 2xx that comes back without Session-Expires to a request that said
  `Supported: timer` gets `Session-Expires: <interval>;refresher=uac` and `Require:
  timer` (`insert_response`, §8.2): the UAC refreshes.
* The interval of the 2xx (§8.2, the authoritative one) + a slack is the FCP group's
  lifetime; every successful refresh (re-INVITE or UPDATE 2xx, §10) renews it; without
  refresh by the interval's end the session has expired (§10) and the call is released.
* Without any session timer (neither UA supports it), the group lives `untimed` seconds
  and is renewed by any re-INVITE/UPDATE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from alg.errors import SipParseError
from alg.sip import MessageEditor, SipMessage
from alg.sip.headers import param_value, parse_params

MIN_SE: Final = 90  # RFC 4028 §4: the smallest Min-SE allowed


@dataclass(frozen=True, slots=True)
class TimerSettings:
    interval: int = 1800  # inserted Session-Expires (RFC 4028 §4 recommends 1800)
    slack: int = 32  # added to the group lifetime (the §10 refresh margin at most)
    untimed: int = 7200  # group lifetime when the UAs use no session timer
    setup: int = 300  # binding lifetime before the call is answered (Timer C + margin)


def session_expires(msg: SipMessage) -> tuple[int, str | None] | None:
    """(delta-seconds, refresher) of Session-Expires, or None (absent or malformed)."""
    value = msg.header("session-expires")
    if value is None:
        return None
    head, semi, tail = value.partition(";")
    head = head.strip()
    if not head.isdigit() or len(head) > 10:
        return None
    try:
        params = parse_params(semi + tail, "Session-Expires") if semi else ()
    except SipParseError:
        params = ()
    return int(head), param_value(params, "refresher")


def min_se(msg: SipMessage) -> int:
    value = (msg.header("min-se") or "").partition(";")[0].strip()
    return max(MIN_SE, int(value)) if value.isdigit() and len(value) <= 10 else MIN_SE


def supports_timer(msg: SipMessage) -> bool:
    try:
        tags = msg.token_list("supported", "Supported") + msg.token_list("require", "Require")
    except SipParseError:
        return False
    return "timer" in tags


def insert_request(edit: MessageEditor, settings: TimerSettings) -> int | None:
    """Add Session-Expires to an INVITE/UPDATE without one; the interval inserted."""
    msg = edit.message
    if msg.has("session-expires"):
        return None
    interval = max(settings.interval, min_se(msg))
    edit.append("session-expires", str(interval).encode())
    return interval


def insert_response(edit: MessageEditor, request_supported_timer: bool, interval: int) -> bool:
    """RFC 4028 §8.2: the UAS ignored the timer but the UAC supports it: the 2xx gets
    Session-Expires with refresher=uac and Require: timer. True if inserted."""
    msg = edit.message
    if msg.has("session-expires") or not request_supported_timer:
        return False
    edit.append("session-expires", f"{interval};refresher=uac".encode())
    edit.append("require", b"timer")
    return True
