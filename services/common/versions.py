"""Versioned folders (ranker checkpoints, adapted encoders) published all at once: written into a hidden folder
beside the versions, synced, then renamed into place, so a reader never sees a half-written version."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path


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


def version_name(created: datetime, content: Path) -> str:
    """``<UTC time>-<first 8 hex digits of the sha256 of content>``: sorts by time, differs by content."""
    with content.open("rb") as f:
        return f"{created:%Y%m%dT%H%M%SZ}-{hashlib.file_digest(f, 'sha256').hexdigest()[:8]}"


def publish(staged: Path, final: Path) -> None:
    """Syncs every file of ``staged`` and renames it to ``final``; FileExistsError when that version exists."""
    for file in staged.iterdir():
        if file.is_file():
            with file.open("rb") as f:
                os.fsync(f.fileno())
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    staged.chmod(0o755)  # mkdtemp makes it 0700; a serving process may run as another user
    staged.rename(final)
