"""Lab bookkeeping on disk: `/run/sipwall-labs/<lab>/state.json`, one per lab.

The state file is written *before* anything it names is created (intent first), so a lab
whose owner dies at any point can be found and removed by another process: its namespaces
are `swlab-<lab>-<host>` and its processes are recorded with their kernel start time, which
makes "is this pid still the process we started?" exact despite pid reuse.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NS_PREFIX = "swlab"
STATE_ROOT = Path(os.environ.get("SIPWALL_LAB_STATE", "/run/sipwall-labs"))
LAB_NAME = re.compile(r"[a-z][a-z0-9]{0,11}\Z")


class LabError(RuntimeError):
    """A lab cannot be built, found or removed; the message says why and what to do."""


def ns_name(lab: str, host: str) -> str:
    return f"{NS_PREFIX}-{lab}-{host}"


def parse_ns_name(name: str) -> tuple[str, str] | None:
    """(lab, host) for one of our namespace names, else None."""
    parts = name.split("-")
    if len(parts) != 3 or parts[0] != NS_PREFIX or not LAB_NAME.match(parts[1]):
        return None
    return parts[1], parts[2]


def ns_lab(name: str) -> str | None:
    """The lab owning one of our namespace names, else None."""
    parsed = parse_ns_name(name)
    return parsed[0] if parsed else None


def default_lab_name(scenario: str) -> str:
    name = re.sub(r"[^a-z0-9]", "", scenario.lower())[:12]
    return name if LAB_NAME.match(name) else "lab"


def check_lab_name(name: str) -> str:
    if not LAB_NAME.match(name):
        raise LabError(f"bad lab name {name!r}: [a-z][a-z0-9]{{0,11}}, no dashes")
    return name


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has finished; only its parent's wait is missing
        return None
    return int(fields[19])


@dataclass(frozen=True)
class ProcRef:
    """A process identified exactly: pid plus kernel start time."""

    pid: int
    start: int
    host: str = ""
    name: str = ""

    @classmethod
    def of(cls, pid: int, host: str = "", name: str = "") -> ProcRef:
        start = start_time(pid)
        if start is None:
            raise LabError(f"process {pid} ({name}) is gone")
        return cls(pid, start, host, name)

    def alive(self) -> bool:
        return start_time(self.pid) == self.start


@dataclass(frozen=True)
class LabState:
    lab: str
    scenario: str
    source: str
    owner: ProcRef
    phase: str  # building | up | tearing-down
    namespaces: tuple[str, ...] = ()
    processes: tuple[ProcRef, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LabState:
        return cls(
            lab=doc["lab"],
            scenario=doc["scenario"],
            source=doc["source"],
            owner=ProcRef(**doc["owner"]),
            phase=doc["phase"],
            namespaces=tuple(doc["namespaces"]),
            processes=tuple(ProcRef(**p) for p in doc["processes"]),
        )


def lab_dir(lab: str, root: Path = STATE_ROOT) -> Path:
    return root / lab


def write_state(state: LabState, root: Path = STATE_ROOT) -> None:
    path = lab_dir(state.lab, root) / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    os.replace(tmp, path)


def read_state(lab: str, root: Path = STATE_ROOT) -> LabState | None:
    """The lab's state, or None when there is no (complete) state file."""
    try:
        doc = json.loads((lab_dir(lab, root) / "state.json").read_text())
        return LabState.from_json(doc)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None  # torn/foreign file: treated as ownerless


def lab_names(root: Path = STATE_ROOT) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and LAB_NAME.match(p.name))


@contextlib.contextmanager
def locked(root: Path = STATE_ROOT) -> Iterator[None]:
    """Serialise claiming names and cleaning leftovers between lab processes."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
