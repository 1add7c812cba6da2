from __future__ import annotations

from collections.abc import Iterator

import pytest
from media_testing import Alg


@pytest.fixture
def alg() -> Iterator[Alg]:
    harness = Alg()
    yield harness
    harness.assert_no_leak()
    harness.close()
