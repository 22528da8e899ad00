"""The README's configuration table lists every setting of every service with its current default."""

from __future__ import annotations

import sys

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from settings_table import rows


def test_settings_table_is_current() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for variable, default, description in rows():
        row = f"| `{variable}` | `{default}` | {description} |"
        assert row in readme, f"README lacks or misstates {variable}: run scripts/settings_table.py and paste the table"
