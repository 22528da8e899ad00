"""Progress for steps that draw no bar of their own, so a long one never looks hung. On stderr, beside tqdm's
bars: stdout stays for results (`recsys train` prints its checkpoint as JSON there)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def heartbeat(step: str, every_s: float = 15.0) -> Iterator[None]:
    """While the block runs, writes `<step>: <elapsed> elapsed` every `every_s` seconds. Through tqdm.write, so a
    progress bar drawn meanwhile (training epochs, loading) is redrawn below the line rather than torn."""
    started = time.monotonic()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every_s):
            tqdm.write(f"{step}: {tqdm.format_interval(time.monotonic() - started)} elapsed", file=sys.stderr)

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
