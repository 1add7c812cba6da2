"""`[proxy] workers` (alg.workers): accepted only where no state must be shared beyond a
call's (alg.affinity), and what
each worker runs with (its counters file, no pid file, its share of the rate limits)."""

from __future__ import annotations

import os
import socket
import tomllib

import pytest

from alg.call_steering import GroupSteering, SteeringError
from alg.config import AlgConfig, ConfigError, parse_config
from alg.workers import (
    parse_steering,
    spread_at_random,
    steering_arguments,
    steering_groups,
    worker_config,
)

STATELESS = 'mode = "stateless"'
BASE = """
[inside]
address = "10.77.0.1"
transports = ["udp"]
[outside]
address = "203.0.113.1"
transports = ["udp"]
[proxy]
workers = 3
{proxy}
{extra}
"""


def parse(proxy: str = 'mode = "stateless"', extra: str = "") -> AlgConfig:
    return parse_config(tomllib.loads(BASE.format(proxy=proxy, extra=extra)))


def test_udp_without_shared_services_may_have_workers_stateless_or_stateful() -> None:
    assert parse().workers == 3
    stateful = parse('mode = "stateful"')
    assert (stateful.mode, stateful.workers) == ("stateful", 3)


@pytest.mark.parametrize(
    ("proxy", "extra", "needs"),
    [
        (STATELESS, "[files]\ncdr = 'cdr.jsonl'", "no cdr_file"),
        (STATELESS, "[auth]\nsubscribers = 'subs.db'", "no [auth] subscribers"),
        (STATELESS + '\ndomains = ["example.com"]', "", 'file, not ":memory:"'),
        (
            STATELESS,
            "[media]\nenabled = true\n[[media.agents]]\nname = 'gw'\naddress = '127.0.0.1:7700'",
            "no [media]",
        ),
    ],
)
def test_workers_that_would_need_shared_state_are_refused(
    proxy: str, extra: str, needs: str
) -> None:
    with pytest.raises(ConfigError, match="workers = 3 needs") as info:
        parse(proxy, extra)
    assert needs in str(info.value)


def test_tcp_with_workers_is_refused() -> None:
    text = BASE.format(proxy=STATELESS, extra="").replace(
        'transports = ["udp"]', 'transports = ["udp", "tcp"]', 1
    )
    with pytest.raises(ConfigError, match="TCP connection belongs to one worker"):
        parse_config(tomllib.loads(text))


def test_a_registrar_with_a_file_is_shared_by_the_workers() -> None:
    config = parse_config(
        tomllib.loads(
            BASE.format(
                proxy=STATELESS + '\ndomains = ["example.com"]',
                extra="[registrar]\ndatabase = 'l.db'",
            )
        )
    )
    assert config.workers == 3


@pytest.mark.parametrize("workers", [0, 33, "2"])
def test_the_number_of_workers_is_checked(workers: object) -> None:
    text = BASE.format(proxy=STATELESS, extra="").replace("workers = 3", f"workers = {workers!r}")
    with pytest.raises(ConfigError, match=r"\[proxy\].workers must be 1-32"):
        parse_config(tomllib.loads(text.replace("'", '"')))


def test_each_worker_has_its_counters_file_no_pid_file_and_a_share_of_the_limits() -> None:
    config = parse_config(
        tomllib.loads(
            BASE.format(
                proxy=STATELESS,
                extra='[files]\nstats = "/run/sw/stats.json"\npid = "/run/sw/alg.pid"\n'
                "[ratelimit]\nenabled = true\ninvite = [6.0, 30.0]\nregister = [3.0, 2.0]",
            )
        )
    )
    second = worker_config(config, 1)
    assert second.stats_file == "/run/sw/stats.worker1.json"
    assert second.pid_file is None
    assert second.ratelimit.invite == (2.0, 10.0)  # each sees a third of a source's requests
    assert second.ratelimit.register == (1.0, 1.0)  # a burst never below one request


def test_the_random_spread_program_is_accepted_by_the_kernel() -> None:
    # Only attaching the program: that it spreads one source over the workers is the lab
    # test's (tests/lab/proxy/test_alg_workers.py), in a namespace.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        spread_at_random(sock, 4)
    finally:
        sock.close()


def test_stateful_workers_get_a_steering_group_per_side_and_stateless_none() -> None:
    groups = steering_groups(parse('mode = "stateful"'))
    try:
        assert set(groups) == {"inside", "outside"}
        assert all(group.workers == 3 for group in groups.values())
        # what the worker is told, read back: the same descriptors per side
        arguments = steering_arguments(groups)
        told = parse_steering(arguments[1::2], 3)
        assert {side: g.descriptors() for side, g in told.items()} == {
            side: g.descriptors() for side, g in groups.items()
        }
    finally:
        for group in groups.values():
            group.close()
    assert steering_groups(parse()) == {}


def test_a_kernel_refusing_the_program_leaves_random_spreading(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    created: list[GroupSteering] = []
    real_create = GroupSteering.create

    def refuse_the_second(workers: int) -> GroupSteering:
        if created:
            raise SteeringError("the kernel refused the steering program: EPERM")
        created.append(real_create(workers))
        return created[-1]

    monkeypatch.setattr(GroupSteering, "create", staticmethod(refuse_the_second))
    assert steering_groups(parse('mode = "stateful"')) == {}
    assert "spread at random" in caplog.text
    with pytest.raises(OSError):  # the first side's group was closed, not leaked
        os.fstat(created[0].map_fd)


def test_a_bad_steering_argument_is_refused() -> None:
    with pytest.raises(ValueError, match="no side"):
        parse_steering(["middle=3,4"], 2)
