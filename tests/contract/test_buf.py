"""Contract: the protos pass `buf lint` (STANDARD) and `buf breaking` against the last tag or the previous commit;
a renamed field or an unreserved deletion is refused, a new field and a reserved deletion pass."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from check_protos import INSTALL_HINT, PROTO_ROOT, baseline_ref, breaking, find_buf, git_input, lint

GATEWAY_PROTO = Path("recsys/gateway/v1/gateway.proto")
EXPLAIN_FIELD = "  bool explain = 14;\n"


@pytest.fixture(scope="module")
def buf() -> str:
    found = find_buf()
    if found is None:
        pytest.skip(f"buf is not installed: {INSTALL_HINT}")
    return found


def _copy_protos(destination: Path) -> Path:
    """The .proto files and buf.yaml, without the generated code."""
    for source in [*PROTO_ROOT.rglob("*.proto"), PROTO_ROOT / "buf.yaml"]:
        target = destination / source.relative_to(PROTO_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    return destination


def _edited(tmp_path: Path, old: str, new: str) -> tuple[Path, Path]:
    before = _copy_protos(tmp_path / "before")
    after = _copy_protos(tmp_path / "after")
    proto = after / GATEWAY_PROTO
    text = proto.read_text()
    assert old in text, f"{GATEWAY_PROTO} no longer has the text this test edits: {old!r}"
    proto.write_text(text.replace(old, new, 1))
    return before, after


def test_lint_is_clean(buf: str) -> None:
    result = lint(buf)
    assert result.returncode == 0, f"buf lint protos:\n{result.stdout}{result.stderr}"


def test_no_breaking_change_since_the_baseline(buf: str) -> None:
    ref = baseline_ref()
    if ref is None:
        pytest.skip("no previous commit or tag to compare with (a clone without history)")
    result = breaking(buf, git_input(ref))
    assert result.returncode == 0, (
        f"buf breaking against {ref}:\n{result.stdout}{result.stderr}\nAdd fields with new numbers and reserve "
        "removed ones instead (README, 'Evolving the protos')."
    )


def test_a_renamed_field_is_refused(buf: str, tmp_path: Path) -> None:
    before, after = _edited(tmp_path, "bool explain = 14;", "bool explain_scores = 14;")
    result = breaking(buf, str(before), protos=after)
    assert result.returncode != 0
    assert 'changed name from "explain" to "explain_scores"' in result.stdout


def test_an_unreserved_deletion_is_refused(buf: str, tmp_path: Path) -> None:
    before, after = _edited(tmp_path, EXPLAIN_FIELD, "")
    result = breaking(buf, str(before), protos=after)
    assert result.returncode != 0
    assert 'field "14" with name "explain" on message "RecommendRequest" was deleted without reserving' in result.stdout


def test_a_reserved_deletion_passes(buf: str, tmp_path: Path) -> None:
    before, after = _edited(tmp_path, EXPLAIN_FIELD, '  reserved 14;\n  reserved "explain";\n')
    result = breaking(buf, str(before), protos=after)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_new_field_passes(buf: str, tmp_path: Path) -> None:
    before, after = _edited(
        tmp_path, EXPLAIN_FIELD, EXPLAIN_FIELD + "  // The caller's locale, for titles.\n  string locale = 900;\n"
    )
    assert lint(buf, after).returncode == 0
    result = breaking(buf, str(before), protos=after)
    assert result.returncode == 0, result.stdout + result.stderr
