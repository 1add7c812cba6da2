"""Regenerate (or check) the committed FCP code in `fcp/v1/` from `proto/fcp/v1/*.proto`.

    python -m fcp.codegen --write   # what `make proto` runs
    python -m fcp.codegen --check   # exit 1 if regenerating would change any file

The generated code is committed so that installing sipwall needs no protoc. Generation is
pinned (grpcio-tools and mypy-protobuf versions in pyproject.toml) and runs with paths
relative to `proto/`, so the output is byte-identical on every machine. `--check` generates
into a temporary directory and compares bytes; it never touches the tree.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
PACKAGE_DIR = Path("fcp") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


class CodegenError(Exception):
    """protoc or one of its plugins failed, or a tool is missing."""


@dataclass(frozen=True)
class Difference:
    """One generated file that is missing, stale, or should not exist."""

    path: Path
    problem: str


def _plugin(name: str) -> Path:
    # The plugins are console scripts installed next to the interpreter (the venv's bin/).
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise CodegenError(f"{name} not found next to {sys.executable}: install mypy-protobuf")
    return path


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """The .proto files of the package, relative to `proto_root`, in a stable order."""
    return sorted(p.relative_to(proto_root) for p in (proto_root / PACKAGE_DIR).glob("*.proto"))


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc with the python, grpc and mypy plugins; return generated paths under out_dir."""
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or spec.origin is None:
        raise CodegenError("grpc_tools not installed: install grpcio-tools")
    include = Path(spec.origin).parent / "_proto"  # google/protobuf/*.proto
    files = proto_files(proto_root)
    if not files:
        raise CodegenError(f"no .proto files under {proto_root / PACKAGE_DIR}")
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={proto_root}",
        f"--proto_path={include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(f) for f in files),
    ]
    # Relative paths in the command line keep absolute paths out of the generated code.
    result = subprocess.run(command, cwd=proto_root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CodegenError(f"protoc failed ({result.returncode}): {result.stderr.strip()}")
    return sorted(
        p.relative_to(out_dir)
        for p in (out_dir / PACKAGE_DIR).iterdir()
        if p.name.endswith(GENERATED_SUFFIXES)
    )


def _committed(repo_root: Path) -> set[Path]:
    directory = repo_root / PACKAGE_DIR
    if not directory.is_dir():
        return set()
    return {
        p.relative_to(repo_root) for p in directory.iterdir() if p.name.endswith(GENERATED_SUFFIXES)
    }


def differences(repo_root: Path = REPO_ROOT) -> list[Difference]:
    """Compare freshly generated code with the committed files, byte for byte."""
    with tempfile.TemporaryDirectory(prefix="fcp-codegen-") as tmp:
        out = Path(tmp)
        fresh = generate(out, repo_root / "proto")
        found: list[Difference] = []
        for rel in fresh:
            target = repo_root / rel
            if not target.exists():
                found.append(Difference(rel, "missing"))
            elif target.read_bytes() != (out / rel).read_bytes():
                found.append(Difference(rel, "out of date"))
        found.extend(
            Difference(rel, "not generated from any .proto")
            for rel in sorted(_committed(repo_root) - set(fresh))
        )
        return found


def write(repo_root: Path = REPO_ROOT) -> list[Path]:
    """Regenerate into the tree; return the files that changed."""
    with tempfile.TemporaryDirectory(prefix="fcp-codegen-") as tmp:
        out = Path(tmp)
        fresh = generate(out, repo_root / "proto")
        changed: list[Path] = []
        for rel in fresh:
            data = (out / rel).read_bytes()
            target = repo_root / rel
            if not target.exists() or target.read_bytes() != data:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                changed.append(rel)
        for rel in _committed(repo_root) - set(fresh):
            (repo_root / rel).unlink()
            changed.append(rel)
        return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fcp.codegen", description=__doc__.split("\n")[0]
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate fcp/v1 in place")
    mode.add_argument("--check", action="store_true", help="fail if fcp/v1 is out of date")
    args = parser.parse_args(argv)
    try:
        if args.write:
            for rel in write():
                print(f"wrote {rel}")
            return 0
        stale = differences()
    except CodegenError as exc:
        print(f"fcp.codegen: {exc}", file=sys.stderr)
        return 2
    for diff in stale:
        print(f"{diff.path}: {diff.problem}", file=sys.stderr)
    if stale:
        print("fcp/v1 is out of date: run `make proto`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
