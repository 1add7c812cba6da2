"""Media anchoring for the ALG (ARCHITECTURE §3), sans-I/O; `alg.media_gate` wires it into
the proxy core (`alg.proxy`).

Modules: `core` (MediaCore, the seam) over its layers `placement` (where each message
stands in its call), `anchoring` (bindings and rules) and `ledger` (state, operations,
rendering); `teardown` (ACK/BYE ending a dialog the ALG cannot anchor), `session`
(per-call state tables, offer/answer placement), `streams` (SDP -> bindings/peers),
`rewrite` + `masking` (SDP anchoring, topology hiding, tokens, Via stash, leak scan),
`antiforgery`, `agents` (choice, retries, circuit breaker), `session_timer` (RFC 4028),
`record` (CDR data), `perform` (the async executor for the shell), `actions` (all the data
crossing the seam).

The seam, for the proxy core and its shell (`alg.proxy`, `alg.aio`)
------------------------------------------------------------------
1. Every datagram/stream message received on the *outside* goes through
   `media.inbound(data, now) -> bytes` before `ProxyCore.receive` (restores masked
   Request-URI/Route/Contact/From/To/Call-ID and, on responses, the stashed inside Vias).
2. Every message the proxy sends where content crosses sides goes through
   `media.crossing(data, from_side=, to_side=, source_host=, now=) -> Outcome`:
   forwarded requests (`_fork`, stateless ACK/CANCEL), forwarded responses
   (`_server_send` with a branch's response), and proxy-made CANCEL/ACK carrying inside
   content (`from_side="inside"`). Proxy-made finals (408/487/503...) are passed with
   `from_side == to_side` (state only: they end calls). `source_host` is where the message
   came from (anti-forgery). The proxy must store the *returned* bytes as the branch's
   data, so retransmissions are the same masked bytes.
   * `Forward(data)`: send `data`.
   * `Reject(status, reason)`: request -> answer it with `status` (488/503/500) and do not
     forward; response -> do not forward it, answer the request's sender `status` instead.
   * `Parked(ticket)`: keep the `Send` aside under `ticket`.
3. The shell runs `media.take_actions()` (each with `alg.media.perform.perform(action,
   api_for[action.agent])`, concurrently) and feeds each result to
   `media.on_result(result, now) -> list[Ready | Refused]`; `Ready(ticket, data)` sends the
   parked message, `Refused(ticket, status)` is handled like `Reject`. A crossing may
   resolve parked messages too (a BYE or CANCEL ends its call): after `crossing`, take
   them with `media.take_resolutions()`.
4. Timers: include `media.get_timer()` in the proxy's `get_timer()`; call
   `media.handle_timer(now)` (it returns resolutions too), then take actions again.
5. CDR: `media.take_endings()` first (calls the ALG ended itself: `recorder.alg_ended`),
   then `for r in media.take_records(): recorder.set_media(r.call_id, r.media)`;
   `media.release_pending(call_id)` tells the recorder whether a record is still coming.
6. Own requests: after each of the above, send `media.take_requests()` (`OwnRequest`:
   an ACK once, a BYE in a client transaction of the proxy's own; `next_hop` names where).
"""

from alg.media.core import MediaConfig, MediaCore

__all__ = ["MediaConfig", "MediaCore"]
