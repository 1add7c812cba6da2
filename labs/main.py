"""`sipwall lab ...`: build, inspect and tear down namespace labs.

    sipwall lab scenarios
    sipwall lab check SCENARIO|FILE.toml
    sipwall lab up SCENARIO [--name N] [--foreground]
    sipwall lab status [--json]
    sipwall lab exec N HOST -- CMD...
    sipwall lab capture N HOST IFACE --out FILE.pcap [--seconds S] [--packets K]
    sipwall lab down [N] [--all]
    sipwall lab demo [--out DIR] [--name N]

`up` starts an *owner* process for the lab (a detached `python -m labs.main _own ...`)
that builds it, reports progress on a pipe and then waits for SIGTERM, on which it tears
the lab down. `up` returns once the owner reports "ready"; if `up` is interrupted
(Ctrl-C, SIGTERM, SIGHUP) before that, it stops the owner, which tears down what it had
built, and makes sure nothing is left. `--foreground` builds in this process instead and
holds the lab until interrupted. `down` signals the owner and waits; a lab whose owner
died is removed directly from its state file (`/run/sipwall-labs/<name>/`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labs import build
from labs import state as st
from labs.signals import Interrupted, deferred_signals, raising_on_signals
from labs.topology import TopologyError, load, scenarios

OWNER_STOP_TIMEOUT = 30.0
READY = "ready"


def _say(message: str) -> None:
    print(message, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sipwall lab", description="namespace labs")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("scenarios", help="list the scenarios in labs/topologies/")
    c = sub.add_parser("check", help="parse and validate a topology")
    c.add_argument("scenario")
    u = sub.add_parser("up", help="build a lab")
    u.add_argument("scenario", help="scenario name (see `scenarios`) or path to a .toml")
    u.add_argument("--name", help="lab name, [a-z][a-z0-9]{0,11} (default: from scenario)")
    u.add_argument("--foreground", action="store_true", help="hold the lab until Ctrl-C")
    o = sub.add_parser("_own")  # internal: the detached owner started by `up`
    o.add_argument("scenario")
    o.add_argument("--name", required=True)
    d = sub.add_parser("down", help="tear a lab down (and clean leftovers)")
    d.add_argument("name", nargs="?")
    d.add_argument("--all", action="store_true", help="every lab and leftover")
    s = sub.add_parser("status", help="running labs and leftovers")
    s.add_argument("--json", action="store_true")
    e = sub.add_parser("exec", help="run a command inside a lab host")
    e.add_argument("name")
    e.add_argument("host")
    e.add_argument("cmd", nargs=argparse.REMAINDER)
    cap = sub.add_parser("capture", help="capture packets on a lab interface (bounded)")
    cap.add_argument("name")
    cap.add_argument("host")
    cap.add_argument("iface")
    cap.add_argument("--out", required=True, type=Path)
    cap.add_argument("--seconds", type=float, default=10.0)
    cap.add_argument("--packets", type=int)
    dm = sub.add_parser("demo", help="two real phones call each other through sipwall")
    dm.add_argument("--out", type=Path, default=Path("demo-output"), help="pcaps, recordings, logs")
    dm.add_argument("--name", default="demo", help="lab name (default: demo)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    handlers = {
        "scenarios": _scenarios,
        "check": _check,
        "up": _up,
        "_own": _own,
        "down": _down,
        "status": _status,
        "exec": _exec,
        "capture": _capture,
        "demo": _demo,
    }
    try:
        return handlers[args.command](args)
    except (st.LabError, TopologyError) as exc:
        print(f"sipwall lab {args.command}: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"sipwall lab {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code


def _scenarios(args: argparse.Namespace) -> int:
    for name in scenarios():
        _say(f"{name:<14}{load(name).description}")
    return 0


def _check(args: argparse.Namespace) -> int:
    topo = load(args.scenario)
    for host in topo.hosts:
        addrs = ", ".join(str(a) for a in topo.addresses(host.name)) or "-"
        extra = " forwarding" if host.forwarding else ""
        extra += f" firewall={host.firewall.forward_policy}" if host.firewall else ""
        extra += f" runs={','.join(host.processes)}" if host.processes else ""
        _say(f"{host.name:<10}{host.kind:<7}{addrs}{extra}")
    _say(f"ok: {len(topo.hosts)} hosts, {len(topo.links)} links")
    return 0


def _lab_name(args: argparse.Namespace) -> str:
    scenario = Path(args.scenario).stem
    return st.check_lab_name(args.name or st.default_lab_name(scenario))


def _up(args: argparse.Namespace) -> int:
    topo = load(args.scenario)  # fail fast on a bad file, before any process starts
    name = _lab_name(args)
    existing = st.read_state(name)
    if existing is not None and existing.owner.alive():
        raise st.LabError(
            f"lab {name} is already running (owner pid {existing.owner.pid}); "
            f"`sipwall lab down {name}` first"
        )
    if args.foreground:
        return _hold(topo.name, args.scenario, name, detach=False)
    owner = subprocess.Popen(
        [sys.executable, "-m", "labs.main", "_own", args.scenario, "--name", name],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the terminal's Ctrl-C reaches us; we stop the owner
    )
    assert owner.stdout is not None
    try:
        with raising_on_signals():
            for raw in owner.stdout:
                line = raw.rstrip("\n")
                if line.startswith(READY):
                    _say(
                        f"lab {name} is up (owner pid {owner.pid}); "
                        f"`sipwall lab down {name}` removes it"
                    )
                    return 0
                if line.startswith("sipwall lab"):  # the owner's error message
                    print(line, file=sys.stderr)
                else:
                    _say(line)
            rc = owner.wait()
            print(
                f"sipwall lab up: the owner exited ({rc}) before the lab was ready", file=sys.stderr
            )
            return rc or 1
    except Interrupted as exc:
        _say(f"{exc}: stopping the owner and tearing lab {name} down")
        with deferred_signals():
            _stop_owner(owner.pid, owner)
            _backstop(name, owner.pid)
        _say(f"lab {name} removed")
        return exc.exit_code
    finally:
        owner.stdout.close()


def _stop_owner(pid: int, popen: subprocess.Popen[str] | None = None) -> None:
    """SIGTERM the owner and wait for it to finish its teardown (SIGKILL at a deadline)."""
    ref = st.ProcRef(pid, st.start_time(pid) or -1)
    if not ref.alive():
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + OWNER_STOP_TIMEOUT
    while ref.alive() and time.monotonic() < deadline:
        if popen is not None and popen.poll() is not None:
            return
        time.sleep(0.05)
    if ref.alive():
        os.kill(pid, signal.SIGKILL)
    if popen is not None:
        popen.wait(10)


def _backstop(name: str, owner_pid: int) -> None:
    """After the owner is gone, remove whatever of lab `name` it left behind."""
    state = st.read_state(name)
    if state is not None and state.owner.alive() and state.owner.pid != owner_pid:
        return  # the name belongs to another, live lab
    build.teardown(name)


def _own(args: argparse.Namespace) -> int:
    return _hold(load(args.scenario).name, args.scenario, _lab_name(args), detach=True)


def _hold(topo_name: str, scenario: str, name: str, *, detach: bool) -> int:
    """Build the lab, report ready, wait for a terminating signal, tear down."""
    source = str(Path(scenario).resolve()) if scenario.endswith(".toml") else scenario
    with raising_on_signals() as latch:
        try:
            lab = build.up(
                load(scenario), name, progress=_say, checkpoint=latch.check, source=source
            )
        except Interrupted as exc:
            return exc.exit_code
        try:
            latch.check()
            _say(f"{READY} {name}")
            if detach:
                _detach(lab.dir / "owner.log")
            else:
                _say("holding the lab; Ctrl-C tears it down")
            while True:
                latch.check()  # a signal swallowed before we got here
                signal.pause()
        except Interrupted:
            return 0  # the normal way to end a held lab
        finally:
            lab.close()


def _detach(log: Path) -> None:
    """Stop writing to `up`'s pipe (it exits after "ready"): log to the lab directory."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _down(args: argparse.Namespace) -> int:
    names = st.lab_names()
    if args.all:
        targets = names
    elif args.name:
        targets = [st.check_lab_name(args.name)]
        if args.name not in names and not any(
            st.ns_lab(n) == args.name for n in build.our_namespaces()
        ):
            raise st.LabError(f"no lab {args.name} (running: {', '.join(names) or 'none'})")
    elif len(names) > 1:
        raise st.LabError(f"several labs: {', '.join(names)}; name one or use --all")
    else:
        targets = names
    with raising_on_signals():
        for name in targets:
            state = st.read_state(name)
            if state is not None and state.owner.alive() and state.owner.pid != os.getpid():
                _say(f"stopping owner {state.owner.pid} of lab {name}")
                _stop_owner(state.owner.pid)
            build.teardown(name, progress=_say)
            _say(f"lab {name} removed")
        with st.locked():  # not while another `up` is between claiming and building
            for left in build.clean_leftovers(progress=_say):
                _say(f"leftover {left.lab} removed")
    return 0


def _status(args: argparse.Namespace) -> int:
    labs: list[dict[str, Any]] = []
    for name in st.lab_names():
        state = st.read_state(name)
        present = [n for n in build.our_namespaces() if st.ns_lab(n) == name]
        labs.append(
            {
                "name": name,
                "scenario": state.scenario if state else None,
                "phase": state.phase if state else None,
                "owner": state.owner.pid if state else None,
                "owner_alive": bool(state and state.owner.alive()),
                "namespaces": present,
                "processes": [
                    {"pid": p.pid, "host": p.host, "name": p.name, "alive": p.alive()}
                    for p in (state.processes if state else ())
                ],
            }
        )
    leftovers = [
        {"lab": left.lab, "reason": left.reason, "namespaces": list(left.namespaces)}
        for left in build.find_leftovers()
    ]
    if args.json:
        _say(json.dumps({"labs": labs, "leftovers": leftovers}, indent=2))
        return 0
    if not labs and not leftovers:
        _say("no labs")
    for lab in labs:
        alive = "alive" if lab["owner_alive"] else "DEAD"
        _say(
            f"{lab['name']:<13}{lab['scenario'] or '?':<14}{lab['phase'] or '?':<13}"
            f"owner {lab['owner']} ({alive})  {len(lab['namespaces'])} namespaces  "
            f"{sum(p['alive'] for p in lab['processes'])} processes"
        )
    for left in leftovers:
        _say(f"leftover {left['lab']}: {left['reason']} ({len(left['namespaces'])} namespaces)")
    return 0


def _namespace(name: str, host: str) -> str:
    if st.read_state(name) is None:
        raise st.LabError(f"no lab {name} (see `sipwall lab status`)")
    ns = st.ns_name(name, host)
    if ns not in build.our_namespaces():
        hosts = [st.parse_ns_name(n) for n in build.our_namespaces()]
        known = ", ".join(h for lab, h in filter(None, hosts) if lab == name)
        raise st.LabError(f"lab {name} has no host {host!r} (hosts: {known})")
    return ns


def _exec(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise st.LabError("no command: sipwall lab exec N HOST -- CMD...")
    ns = _namespace(args.name, args.host)
    os.execvp("ip", ["ip", "netns", "exec", ns, *cmd])


def _capture(args: argparse.Namespace) -> int:
    if not 0 < args.seconds <= 3600:
        raise st.LabError("--seconds must be in (0, 3600]")
    ns = _namespace(args.name, args.host)
    out = args.out.resolve()
    argv = ["dumpcap", "-q", "-i", args.iface, "-a", f"duration:{args.seconds:g}", "-w", str(out)]
    if out.suffix == ".pcap":
        argv.append("-P")  # classic pcap; pcapng otherwise
    if args.packets:
        argv += ["-c", str(args.packets)]
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL)
    try:
        with raising_on_signals():
            rc = proc.wait(args.seconds + 15)
    except (Interrupted, subprocess.TimeoutExpired) as exc:
        proc.terminate()  # dumpcap finishes the file on SIGTERM
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise st.LabError(f"dumpcap did not stop after {args.seconds:g}s") from None
        raise
    if rc == 0:
        _say(f"captured {args.host}:{args.iface} to {out}")
    return rc


def _demo(args: argparse.Namespace) -> int:
    """`sipwall lab demo`: see labs/demo.py. The last line printed starts with `demo:`."""
    from labs import demo

    name = st.check_lab_name(args.name)
    out = args.out.resolve()
    with raising_on_signals() as latch:
        try:
            passed, summary = demo.run(out, name, _say, latch.check)
        except Interrupted as exc:
            _say(f"demo: FAIL — {exc}; lab {name} torn down")
            return exc.exit_code
    _say(f"demo: {'PASS' if passed else 'FAIL'} — {summary}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
