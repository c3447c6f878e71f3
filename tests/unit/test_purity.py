"""The guard in tests/unit/conftest.py: what makes a unit test fail, and what not."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

# The guard raises an AssertionError (conftest modules are not importable by name).


def test_an_internet_socket_fails_the_test() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(AssertionError, match="binds an internet socket"):
            sock.bind(("127.0.0.1", 0))
        with pytest.raises(AssertionError, match="connects an internet socket"):
            sock.connect(("127.0.0.1", 9))


def test_a_subprocess_fails_the_test() -> None:
    with pytest.raises(AssertionError, match="starts a subprocess"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)


async def test_the_event_loops_own_socket_pair_still_works() -> None:
    # asyncio wakes its loop through a socketpair; call_soon_threadsafe uses it.
    done = asyncio.Event()
    asyncio.get_running_loop().call_soon_threadsafe(done.set)
    await asyncio.wait_for(done.wait(), 5)
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"x")
        assert right.recv(1) == b"x"
