"""The capability probe itself: on machines where namespace tests are required it must
report the capability, so a broken probe cannot silently turn every kernel test into a skip."""

from __future__ import annotations

import pytest

from labs.capability import netns_capability, tools_capability


@pytest.mark.netns
def test_netns_probe_reports_available() -> None:
    capability = netns_capability()
    assert capability.available, capability.reason


def test_tools_probe_names_what_is_missing() -> None:
    capability = tools_capability("sh", "definitely-not-a-sipwall-tool")
    assert not capability.available
    assert "definitely-not-a-sipwall-tool" in capability.reason
    assert "sh" not in capability.reason.split(": ", 1)[1].split(", ")
