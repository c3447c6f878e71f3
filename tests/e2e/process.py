"""An ``exchange serve`` process for the end-to-end tests, stopped by its own pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import free_port, wait_until

__all__ = ["EXCHANGE", "ServerProcess"]

# The installed console script of this virtualenv.
EXCHANGE = str(Path(sys.executable).parent / "exchange")


class ServerProcess:
    """`exchange serve` on a free loopback port (or ``port``), in its own process
    group; ``extra`` are more `serve` options (the Kafka bus)."""

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"server-{self.port}-{time.monotonic_ns()}.log"
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            [EXCHANGE, "serve", "--data-dir", str(data_dir), "--listen", self.target, *extra],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, like a terminal job
            env=None if env is None else {**os.environ, **env},
        )
        try:
            wait_until(self.serving, 60, f"server on {self.target} (log: {self.log})")
        except BaseException:
            # A server that did not come up (some tests expect that): stop it if it
            # still runs, and close its log, which nothing else would.
            self.stop()
            raise

    def serving(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited: {self.log.read_text()}")
        with grpc.insecure_channel(self.target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def kill(self) -> None:
        """SIGKILL the server's process group: a crash, nothing flushed or closed."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, as an orchestrator stops a replica; its exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is not None:
            self._log.close()
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
