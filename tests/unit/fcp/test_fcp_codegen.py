"""The committed fcp/v1 code is exactly what the pinned generators produce from proto/."""

from __future__ import annotations

import shutil
from pathlib import Path

from fcp import codegen


def test_committed_code_is_up_to_date() -> None:
    stale = codegen.differences()
    assert stale == [], "run `make proto`: " + ", ".join(f"{d.path} {d.problem}" for d in stale)
    assert codegen.main(["--check"]) == 0


def _copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(codegen.REPO_ROOT / "proto", root / "proto")
    shutil.copytree(codegen.REPO_ROOT / "fcp" / "v1", root / "fcp" / "v1")
    return root


def test_check_detects_stale_missing_and_extra_files(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    assert codegen.differences(root) == []
    (root / "fcp/v1/fcp_pb2.pyi").write_text("# hand edit\n")
    (root / "fcp/v1/fcp_pb2_grpc.py").unlink()
    (root / "fcp/v1/old_pb2.py").write_text("")
    found = {(str(d.path), d.problem) for d in codegen.differences(root)}
    assert found == {
        ("fcp/v1/fcp_pb2.pyi", "out of date"),
        ("fcp/v1/fcp_pb2_grpc.py", "missing"),
        ("fcp/v1/old_pb2.py", "not generated from any .proto"),
    }
    changed = codegen.write(root)
    assert len(changed) == 3 and codegen.differences(root) == []


def test_generated_code_imports_with_installed_runtime() -> None:
    from fcp.v1 import fcp_pb2, fcp_pb2_grpc

    assert fcp_pb2.DESCRIPTOR.package == "fcp.v1"
    assert hasattr(fcp_pb2_grpc, "FirewallControlStub")
    names = set(fcp_pb2.FcpErrorDetail.Reason.keys())
    assert {"REASON_MALFORMED", "REASON_STALE_EPOCH", "REASON_NETWORK_FAILURE"} <= names
