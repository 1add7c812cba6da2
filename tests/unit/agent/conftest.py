"""Golden files: compare, or rewrite with SIPWALL_UPDATE_GOLDEN=1 (then review the diff)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).parent / "golden"


def check_golden(name: str, actual: str | Any) -> None:
    text = (
        actual if isinstance(actual, str) else json.dumps(actual, indent=1, sort_keys=True) + "\n"
    )
    path = GOLDEN / name
    if os.environ.get("SIPWALL_UPDATE_GOLDEN") == "1" or not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            raise AssertionError(f"golden file {name} missing in CI")
        path.write_text(text)
    assert text == path.read_text(), f"differs from golden {name}"


@pytest.fixture
def golden() -> Any:
    return check_golden
