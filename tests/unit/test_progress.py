"""Issue 20, case 4: a step that draws no bar of its own still says, now and then, that it is running."""

from __future__ import annotations

import time

import pytest

from services.cli.progress import heartbeat


def test_a_long_step_prints_its_elapsed_time_on_stderr_until_it_ends(capsys: pytest.CaptureFixture[str]) -> None:
    with heartbeat("starting the services", every_s=0.05):
        time.sleep(0.5)
    printed = capsys.readouterr()
    lines = printed.err.splitlines()
    assert len(lines) >= 2, printed.err
    assert set(lines) == {"starting the services: 00:00 elapsed"}
    assert printed.out == "", "stdout stays for results"
    time.sleep(0.2)
    assert capsys.readouterr().err == "", "nothing more once the step ended"


def test_a_short_step_ends_at_once_and_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    with heartbeat("loading", every_s=60.0):
        pass
    assert time.monotonic() - started < 5.0, "the step does not wait for the next beat"
    assert capsys.readouterr().err == ""
