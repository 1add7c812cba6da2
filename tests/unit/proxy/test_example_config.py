"""The shipped example configuration is valid and says what the README promises."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from alg.assemble import media_core
from alg.config import ConfigError, parse_config
from alg.media.core import MediaCore

EXAMPLE = Path(__file__).resolve().parents[3] / "alg" / "alg.example.toml"


def test_the_example_configuration_parses_with_media_anchoring() -> None:
    config = parse_config(tomllib.loads(EXAMPLE.read_text()))
    assert config.media.enabled
    assert [agent.name for agent in config.media.agents] == ["gw1"]
    agent = config.media.agents[0]
    assert agent.ca and agent.cert and agent.key  # mutual TLS
    assert config.media.secret_file is not None  # tokens survive a restart
    assert config.registrar.database != ":memory:"  # so do registrations


MINIMAL = """
[inside]
address = "10.77.0.1"
[outside]
address = "203.0.113.1"
[media]
enabled = true
{extra}
[[media.agents]]
name = "gw1"
address = "127.0.0.1:7700"
"""


def test_media_timeout_becomes_the_pinholes_max_idle() -> None:
    def media(extra: str) -> MediaCore:
        core = media_core(parse_config(tomllib.loads(MINIMAL.format(extra=extra))))
        assert core is not None
        return core

    assert media("").config.max_idle is None  # off unless asked for
    assert media("media_timeout = 0").config.max_idle is None
    assert media("media_timeout = 45").config.max_idle == 45
    with pytest.raises(ConfigError, match="media_timeout"):
        media("media_timeout = -1")
    with pytest.raises(ConfigError, match="media_timeout"):
        media('media_timeout = "60s"')
