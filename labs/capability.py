"""Capability probes: decide from what the machine can do, not from the uid, whether
namespace and kernel tests can run here.

The probe runs in a throw-away network namespace (`unshare --net`), so it never touches
the root namespace's network and leaves nothing behind even if it is killed midway.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass

_NETNS_PROBE = (
    "set -e; "
    "ip link add sw-probe-a type veth peer name sw-probe-b; "
    "ip link set sw-probe-a up; "
    "nft add table inet sipwall_probe; "
    "nft add set inet sipwall_probe s '{ type ipv4_addr . inet_service; flags timeout; }'; "
    "nft delete table inet sipwall_probe"
)


@dataclass(frozen=True)
class Capability:
    available: bool
    reason: str


@functools.cache
def netns_capability() -> Capability:
    """Can we create a network namespace, a veth pair and an nftables table in it?"""
    for tool in ("unshare", "ip", "nft"):
        if shutil.which(tool) is None:
            return Capability(False, f"{tool} is not installed")
    try:
        done = subprocess.run(
            ["unshare", "--net", "sh", "-c", _NETNS_PROBE],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Capability(False, f"namespace probe could not run: {exc}")
    if done.returncode != 0:
        return Capability(False, f"namespace probe failed: {done.stderr.strip()[:300]}")
    return Capability(True, "network namespaces, veth and nftables work")


@functools.cache
def tools_capability(*tools: str) -> Capability:
    """Are these executables (e.g. real SIP peers) installed?"""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return Capability(False, "not installed: " + ", ".join(missing))
    return Capability(True, "installed: " + ", ".join(tools))
