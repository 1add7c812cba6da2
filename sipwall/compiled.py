"""The hot-path modules compiled to C with mypyc, and the check that they are current.

Why: per SIP message the proxy spends its time in plain Python (parsing header fields,
span edits, the transaction tables); mypyc compiles exactly this code — already typed
for mypy --strict — into C extensions without changing a line of behaviour, and the
stateful core's CPU per call drops by about a third (`bench/proxy_core_cpu.py`). Only
the sans-I/O cores are compiled: the asyncio shells, the CLI and the tests stay
interpreted, so monkeypatching and tracebacks there work as before.

A compiled module (`x.cpython-311-x86_64-linux-gnu.so` next to `x.py`) wins over its
source at import. `make compiled` (a step of `make test` and `make demo`) rebuilds when a
source is newer than its extension; `stale()` lets the test session and `sipwall` refuse
or warn about an out-of-date build instead of silently running old code. Without a
build, everything runs interpreted, with the same results.

    python -m sipwall.compiled build     # compile what is missing or stale
    python -m sipwall.compiled clean     # remove every compiled module
    python -m sipwall.compiled check     # exit 1 if any is stale
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]

# Sources, relative to ROOT. mypyc needs the whole set at once (one shared library).
MODULES: tuple[str, ...] = (
    "alg/sip/edit.py",
    "alg/sip/headers.py",
    "alg/sip/memo.py",
    "alg/sip/message.py",
    "alg/sip/multipart.py",
    "alg/sip/stream.py",
    "alg/sip/uri.py",
    "alg/sip/validate.py",
    "alg/sdp/edits.py",
    "alg/sdp/fields.py",
    "alg/sdp/ice.py",
    "alg/sdp/layout.py",
    "alg/sdp/model.py",
    "alg/sdp/parse.py",
    "alg/sdp/rewrite.py",
    "alg/builders.py",
    "alg/edge.py",
    "alg/forwarding.py",
    "alg/hop_health.py",
    "alg/proxy.py",
    "alg/proxy_model.py",
    "alg/proxy_plumbing.py",
    "alg/proxy_responses.py",
    "alg/proxy_state.py",
    "alg/routing.py",
    "alg/transaction_keys.py",
    "alg/transactions.py",
    "alg/media_gate.py",
    "alg/media/anchoring.py",
    "alg/media/core.py",
    "alg/media/masking.py",
    "alg/media/placement.py",
    "alg/media/rewrite.py",
    "alg/media/session.py",
    "alg/media/streams.py",
    "alg/media/actions.py",
    "alg/media/agents.py",
    "alg/media/antiforgery.py",
    "alg/media/ledger.py",
    "alg/media/record.py",
    "alg/media/session_timer.py",
    "alg/media/teardown.py",
    "alg/ratelimit.py",
    "alg/call_events.py",
    "alg/call_hash.py",
)

PACKAGES = ("alg", "fcp", "filter_agent", "labs", "sipwall")

# What the `mypyc` command does, but with the shared library of the whole group named
# inside the `alg` package: as a top-level module (the command's hash name) it is only
# importable with the checkout itself on sys.path, which an installed `sipwall` script or
# `python bench/x.py` does not have.
GROUP = "alg.hotpath"
_SETUP = f"""
import sys
from setuptools import setup
from mypyc.build import mypycify
setup(name="sipwall-hotpath", ext_modules=mypycify(sys.argv[1:], group_name="{GROUP}"),
      script_args=["build_ext", "--inplace"])
"""

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def module_name(source: str) -> str:
    return source.removesuffix(".py").replace("/", ".")


def extension_of(source: Path) -> Path:
    return source.with_name(source.stem + SUFFIX)


def _sources() -> list[Path]:
    return [ROOT / name for name in MODULES]


def _library() -> Path:
    """The group's shared library, which every module's extension loads."""
    return extension_of(ROOT / (GROUP.replace(".", "/") + "__mypyc.py"))


def built() -> list[Path]:
    """Compiled modules present in the tree (of the current list or an older one)."""
    found = set(ROOT.glob(f"*{SUFFIX}"))  # shared libraries of `mypyc` command builds
    for package in PACKAGES:
        found.update((ROOT / package).glob(f"**/*{SUFFIX}"))
    return sorted(found)


def stale() -> list[str]:
    """Sources whose extension is missing or older than they are, once any was built; an
    empty list also when nothing is built (everything then runs interpreted)."""
    if not built():
        return []
    library = _library()
    expected = {extension_of(source) for source in _sources()} | {library}
    # an extension of a module no longer listed, or another shared library: an old build
    out = [str(p.relative_to(ROOT)) for p in built() if p not in expected]
    if not library.exists():
        out.append(str(library.relative_to(ROOT)))
    for source in _sources():
        extension = extension_of(source)
        if not extension.exists() or extension.stat().st_mtime < source.stat().st_mtime:
            out.append(str(source.relative_to(ROOT)))
    return out


def active() -> bool:
    """Whether the compiled modules are what `import` loads here."""
    spec = importlib.util.find_spec(module_name(MODULES[0]))
    return spec is not None and (spec.origin or "").endswith(SUFFIX)


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds the listed modules' `.py` files even where their extensions are built."""

    def __init__(self) -> None:
        self._names = {module_name(source): ROOT / source for source in MODULES}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        source = self._names.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def use_interpreted() -> None:
    """Import the listed modules from their sources from now on (the test suite's
    interpreted pass: `SIPWALL_INTERPRETED=1`). Call before anything imports them."""
    loaded = [name for name in map(module_name, MODULES) if name in sys.modules]
    if loaded:
        raise RuntimeError(f"already imported: {loaded}")
    sys.meta_path.insert(0, _SourceFirst())


def clean() -> None:
    for path in built():
        path.unlink()


def build() -> None:
    sources = _sources()
    if built() and not stale():
        print(f"compiled modules: all {len(sources)} current")
        return
    clean()  # a shared library of an older module list must not linger
    print(f"compiled modules: building {len(sources)} with mypyc")
    done = subprocess.run(
        [sys.executable, "-c", _SETUP, *(str(s.relative_to(ROOT)) for s in sources)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        clean()
        raise SystemExit(f"mypyc failed:\n{done.stdout[-4000:]}")
    missing = [s for s in sources if not extension_of(s).exists()]
    if missing:
        raise SystemExit(f"mypyc built no extension for {missing}")
    # When the C code is unchanged (a source only touched, e.g. by `git stash`), setuptools
    # copies the cached extension with its old mtime, which would still look stale.
    now = time.time()
    for extension in (*(extension_of(s) for s in sources), _library()):
        os.utime(extension, (now, now))


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    if command == "build":
        build()
    elif command == "clean":
        clean()
    elif command == "check":
        old = stale()
        if old:
            print(f"stale compiled modules (run `make compiled`): {', '.join(old)}")
            return 1
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
