"""Lab framework tests: register the lab fixtures (labs/pytest_plugin.py) for this directory."""

from __future__ import annotations

from labs.pytest_plugin import lab_factory

__all__ = ["lab_factory"]
