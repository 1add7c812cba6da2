"""fcp.grpc_runtime: the gRPC core's I/O settings, chosen before grpc is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fcp import grpc_runtime

ROOT = Path(__file__).resolve().parents[3]


def _environ_without_setting() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != grpc_runtime.EXPERIMENTS_VARIABLE}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_configure_chooses_the_legacy_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "grpc", raising=False)
    env: dict[str, str] = {}
    assert grpc_runtime.configure(env) is True
    assert env == {"GRPC_EXPERIMENTS": "-event_engine_client,-event_engine_listener"}


def test_configure_says_when_grpc_was_imported_first() -> None:
    import grpc  # noqa: F401  (already loaded by the suite; made sure here)

    env: dict[str, str] = {}
    assert grpc_runtime.configure(env) is False  # too late for this process
    assert env["GRPC_EXPERIMENTS"] == grpc_runtime.LEGACY_ENDPOINTS  # children inherit it


def test_an_operators_setting_is_kept() -> None:
    env = {"GRPC_EXPERIMENTS": "event_engine_dns"}
    assert grpc_runtime.configure(env) is False
    assert env == {"GRPC_EXPERIMENTS": "event_engine_dns"}


def test_the_command_configures_grpc_before_a_subcommand_imports_it(tmp_path: Path) -> None:
    (tmp_path / "grpc_probe.py").write_text(
        "import os, sys\n"
        "def main(argv):\n"
        "    print('grpc' in sys.modules, os.environ.get('GRPC_EXPERIMENTS'))\n"
        "    return 0\n"
    )
    code = (
        "from sipwall import cli\n"
        "cli.SUBCOMMANDS['probe'] = ('grpc_probe', 'test')\n"
        "raise SystemExit(cli.main(['probe']))\n"
    )
    env = _environ_without_setting()
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{ROOT}"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", grpc_runtime.LEGACY_ENDPOINTS]


def _grpc_complaints(experiments: str | None) -> str:
    """What grpc writes to stderr when imported with `experiments` set by configure()
    (None) or by hand."""
    setup = (
        "from fcp import grpc_runtime; grpc_runtime.configure()"
        if experiments is None
        else f"import os; os.environ['GRPC_EXPERIMENTS'] = {experiments!r}"
    )
    done = subprocess.run(
        [sys.executable, "-c", f"{setup}\nimport grpc"],
        env=_environ_without_setting(),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stderr


def test_the_installed_grpc_knows_the_experiments_we_switch_off() -> None:
    # A grpcio that dropped them would silently run with its event engine again: this
    # is where such an upgrade shows.
    assert "Unknown experiment" in _grpc_complaints("-no_such_experiment")  # it would say
    assert "Unknown experiment" not in _grpc_complaints(None)
