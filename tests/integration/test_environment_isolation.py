"""A developer's EXCHANGE_* settings do not reach the tests: a pytest session started
with some set drops them before any test runs, and says so in its header."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_session_drops_the_developers_exchange_settings() -> None:
    # Without the caller's PYTEST_ADDOPTS: CI's -q would hide the header read below.
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env |= {
        "EXCHANGE_DATABASE": "postgresql://someone-elses-host/db",
        "EXCHANGE_DATA_DIR": "/somewhere/else",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "tests/unit/test_environment.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "environment: dropped EXCHANGE_DATABASE, EXCHANGE_DATA_DIR" in done.stdout
    assert "3 passed" in done.stdout
