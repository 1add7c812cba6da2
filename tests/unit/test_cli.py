from __future__ import annotations

import pytest

from sipwall import __version__
from sipwall.cli import SUBCOMMANDS, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sipwall {__version__}"


def test_unknown_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err
    for name in SUBCOMMANDS:
        assert name in err


def test_no_arguments_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: sipwall" in capsys.readouterr().out


def test_ctl_users_add_and_list(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    db = str(tmp_path / "subscribers.db")
    assert main(["ctl", "users", "add", "alice@example.com", "--password", "pw", "--db", db]) == 0
    assert main(["ctl", "users", "list", "--db", db]) == 0
    listing = capsys.readouterr().out
    assert "alice@example.com" in listing and "pw" not in listing


def test_ctl_reload_signals_the_alg(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    import time

    flag = tmp_path / "hup"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal,sys,time,pathlib\n"
            f"mark = pathlib.Path({str(flag)!r})\n"
            "signal.signal(signal.SIGHUP, lambda *a: mark.write_text('1'))\n"
            "print('ready', flush=True)\ntime.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        pid_file = tmp_path / "alg.pid"
        pid_file.write_text(f"{child.pid}\n")
        assert main(["ctl", "reload", "--pid-file", str(pid_file)]) == 0
        deadline = time.monotonic() + 5
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert flag.read_text() == "1"
        assert main(["ctl", "reload", "--pid-file", str(tmp_path / "missing.pid")]) != 0
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
