"""The media part of a call's CDR: the bindings it used and their counters at release.

`MediaCore` turns each `ReleaseReport` (what the agent held for the group just before
`ChangeGroupLifetime(0)`) into a `MediaRecord`; the shell hands it to
`alg.cdr.CallRecorder.set_media(call_id, record.media)`. A release that failed for good
(every attempt, `alg.media.agents`) still gives a record, `failed_release_record`, so the
CDR waiting for it is written at once and says why it has no counters; the kernel
timeouts end that media (ARCHITECTURE §3 step 7).
"""

from __future__ import annotations

from typing import Any

from alg.media.actions import MediaRecord, ReleaseReport


def media_record(call_id: str, agent: str, report: ReleaseReport) -> MediaRecord:
    bindings: list[dict[str, Any]] = [
        {
            "internal": str(b.internal),
            "external_address": str(b.external_address),
            "external_ports": list(b.external_ports),
            "kind": b.kind.value,
            "packets": b.counters.packets,
            "bytes": b.counters.bytes,
        }
        for b in report.bindings
    ]
    rules: list[dict[str, Any]] = [
        {
            "binding_id": r.binding_id,
            "remote_address": str(r.remote_address),
            "packets": r.counters.packets,
            "bytes": r.counters.bytes,
        }
        for r in report.rules
    ]
    media: dict[str, Any] = {
        "agent": agent,
        "bindings": bindings,
        "rules": rules,
        "packets": sum(b["packets"] for b in bindings),
        "bytes": sum(b["bytes"] for b in bindings),
    }
    return MediaRecord(call_id, media)


def failed_release_record(call_id: str, agent: str, error: object) -> MediaRecord:
    return MediaRecord(call_id, {"agent": agent, "error": f"release failed: {error}"})
