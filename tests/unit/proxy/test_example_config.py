"""The shipped example configuration is valid and says what the README promises."""

from __future__ import annotations

import tomllib
from pathlib import Path

from alg.config import parse_config

EXAMPLE = Path(__file__).resolve().parents[3] / "alg" / "alg.example.toml"


def test_the_example_configuration_parses_with_media_anchoring() -> None:
    config = parse_config(tomllib.loads(EXAMPLE.read_text()))
    assert config.media.enabled
    assert [agent.name for agent in config.media.agents] == ["gw1"]
    agent = config.media.agents[0]
    assert agent.ca and agent.cert and agent.key  # mutual TLS
    assert config.media.secret_file is not None  # tokens survive a restart
    assert config.registrar.database != ":memory:"  # so do registrations
