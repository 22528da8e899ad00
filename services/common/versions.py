"""Versioned folders (ranker checkpoints, adapted encoders) published all at once: written into a hidden folder
beside the versions, synced, then renamed into place, so a reader never sees a half-written version."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def staging_folder(root: Path) -> Iterator[Path]:
    """A hidden folder under ``root`` to write a new version into; removed when the block fails."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def version_name(created: datetime, contents: Sequence[Path], description: dict[str, Any]) -> str:
    """``<UTC time to the second>-<first 8 hex digits of the sha256 of the contents and description>``: sorts by
    time, differs by content. ``description`` is the version's metadata (less its name), whose creation time to the
    microsecond keeps two runs in one second that trained the same weights apart."""
    digest = hashlib.sha256()
    for content in contents:
        with content.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    digest.update(json.dumps(description, sort_keys=True).encode())
    return f"{created:%Y%m%dT%H%M%SZ}-{digest.hexdigest()[:8]}"


def publish(staged: Path, final: Path) -> None:
    """Syncs every file of ``staged`` (its subfolders too) and renames it to ``final``; FileExistsError when that
    version exists."""
    for file in staged.rglob("*"):
        if file.is_file():
            with file.open("rb") as f:
                os.fsync(f.fileno())
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    staged.chmod(0o755)  # mkdtemp makes it 0700; a serving process may run as another user
    staged.rename(final)
