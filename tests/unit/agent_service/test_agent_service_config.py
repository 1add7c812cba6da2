"""Configuration loading: every mistake names its key; the command line exits with 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from filter_agent import main as agent_main
from filter_agent.config import ConfigError, load

EXAMPLE = Path(__file__).resolve().parents[3] / "filter_agent" / "agent.example.toml"

GOOD = """
[agent]
listen = "127.0.0.1:7700"
state_db = "agent.db"
[tls]
ca = "pki/ca.pem"
cert = "pki/server.pem"
key = "pki/server.key"
[clients]
allowed = ["alg-1"]
admin = ["ctl"]
[pool]
addresses = ["203.0.113.1"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_the_example_is_valid_and_documented() -> None:
    config = load(EXAMPLE)
    assert config.pool.addresses == ("203.0.113.1",)
    assert config.admin == frozenset({"ctl"})
    assert config.tls is not None and config.tls.ca == EXAMPLE.parent / "pki" / "ca.pem"


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD))
    assert config.state_db == tmp_path / "agent.db"
    assert (config.pool.port_min, config.pool.port_max, config.pool.quarantine) == (
        20000,
        59999,
        120.0,
    )
    assert config.max_lifetime == 3600.0
    assert config.quotas.ports_per_owner is None
    assert (config.latch, config.latch_queue) == (True, 5189)
    off = load(write(tmp_path, GOOD.replace("[agent]", "[agent]\nlatch = false\nlatch_queue = 7")))
    assert (off.latch, off.latch_queue) == (False, 7)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (('listen = "127.0.0.1:7700"', 'listen = "nowhere"'), "agent.listen"),
        (('addresses = ["203.0.113.1"]', 'addresses = ["2001:db8::1"]'), "pool.addresses"),
        (('addresses = ["203.0.113.1"]', "addresses = []"), "pool.addresses"),
        (('allowed = ["alg-1"]', 'allowed = ["bad id"]'), "clients.allowed"),
        (('state_db = "agent.db"', "state_db = 3"), "agent.state_db"),
        (("[pool]", "[pool]\nport_min = 30000\nport_max = 20000"), "pool.port_min"),
        (("[pool]", "[pool]\ncolour = 1"), "pool.colour"),
        (('[tls]\nca = "pki/ca.pem"\ncert = "pki/server.pem"\nkey = "pki/server.key"', ""), "tls"),
        (("[agent]", '[agent]\nlog_level = "LOUD"'), "agent.log_level"),
        (("[agent]", "[agent]\nmax_lifetime = 0"), "agent.max_lifetime"),
        (("[agent]", "[agnet]\n[agent]"), "agnet"),
        (("[agent]", '[agent]\nlatch = "yes"'), "agent.latch"),
        (("[agent]", "[agent]\nlatch_queue = 65536"), "agent.latch_queue"),
        (("[agent]", '[agent]\nelement_writer = "nft"'), "agent.element_writer"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, change: tuple[str, str], key: str) -> None:
    assert change[0] in GOOD
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, GOOD.replace(change[0], change[1])))
    assert info.value.key == key


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "missing.toml")
    assert info.value.key == "config"
    with pytest.raises(ConfigError):
        load(write(tmp_path, "[agent\n"))


def test_cli_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, GOOD)
    assert agent_main.main(["check-config", "--config", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("[pool]", "[pool]\nport_min = 1"))
    assert agent_main.main(["check-config", "--config", str(bad)]) == 2
    assert "pool.port_min" in capsys.readouterr().err
    assert agent_main.main(["--config", str(bad)]) == 2


def test_gen_certs(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    code = agent_main.main(
        [
            "gen-certs",
            "--out",
            str(out),
            "--server-ip",
            "10.77.0.1",
            "--client",
            "alg-1",
            "--client",
            "ctl",
        ]
    )
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"ca.pem", "server.pem", "alg-1.key", "ctl.pem"}
    assert (out / "ctl.key").stat().st_mode & 0o077 == 0
    shutil.rmtree(out)
