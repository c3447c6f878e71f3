"""Unit tests are pure: no network, no other processes.

A unit test that binds or connects an internet socket (loopback included), builds a
gRPC server or channel (gRPC opens its sockets in C, past the ``socket`` module), or
starts a process fails with the reason; such a test belongs in tests/integration.
Unix socket pairs stay allowed: every asyncio event loop makes one to wake itself.
"""

from __future__ import annotations

import multiprocessing.process
import os
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import pytest

_INET = (socket.AF_INET, socket.AF_INET6)


class ImpureUnitTest(AssertionError):
    pass


def _refuse(what: str) -> Callable[..., Any]:
    def refused(*args: object, **kwargs: object) -> Any:
        raise ImpureUnitTest(f"a unit test {what}; move it to tests/integration")

    return refused


def _inet_only(original: Callable[..., Any], what: str) -> Callable[..., Any]:
    def guarded(self: socket.socket, *args: object, **kwargs: object) -> Any:
        if self.family in _INET:
            raise ImpureUnitTest(
                f"a unit test {what} an internet socket; move it to tests/integration"
            )
        return original(self, *args, **kwargs)

    return guarded


@pytest.fixture(autouse=True)
def _no_network_or_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, what in (("bind", "binds"), ("connect", "connects"), ("connect_ex", "connects")):
        monkeypatch.setattr(socket.socket, name, _inet_only(getattr(socket.socket, name), what))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("starts a subprocess"))
    monkeypatch.setattr(os, "system", _refuse("starts a subprocess"))
    monkeypatch.setattr(os, "posix_spawn", _refuse("starts a subprocess"))
    monkeypatch.setattr(os, "fork", _refuse("forks a process"))
    monkeypatch.setattr(
        multiprocessing.process.BaseProcess, "start", _refuse("starts a worker process")
    )
    for module, name in (
        (grpc, "server"),
        (grpc, "insecure_channel"),
        (grpc, "secure_channel"),
        (grpc.aio, "server"),
        (grpc.aio, "insecure_channel"),
        (grpc.aio, "secure_channel"),
    ):
        monkeypatch.setattr(module, name, _refuse(f"uses gRPC's network ({name})"))
