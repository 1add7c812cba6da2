"""The `agent_lab` fixture (defined in agent_lab.py with the lab it builds).

Tests import the lab's names from `agent_lab`, never from `conftest`: every test directory
has a conftest.py, and which one `import conftest` finds depends on collection order."""

from agent_lab import agent_lab

__all__ = ["agent_lab"]
