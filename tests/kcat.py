"""Read a topic with the real ``kcat`` CLI: a second, independent Kafka client
(librdkafka) that checks what our aiokafka code put on the wire.

Against Tansu, start the broker with ``TansuBroker(kcat_compatible=True)`` (the
``tansu`` fixture does): Debian's kcat 1.7.1 (librdkafka 2.0.2) cannot parse
Tansu's ApiVersions response otherwise; see ``tests/kafka_broker.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

__all__ = ["kcat_read"]


def kcat_read(
    bootstrap: str, topic: str, *, expect: int, timeout_s: float = 20
) -> list[dict[str, Any]]:
    """The first ``expect`` records of ``topic`` (all partitions), as dicts with
    ``topic``, ``partition``, ``offset``, ``key`` and ``value`` (str or None) and
    ``headers`` (a list of (name, value) str pairs).

    Stops after ``expect`` records (``-c``) rather than at end of partition (``-e``):
    Tansu's high watermark can lag, and ``-e`` would then stop early.
    """
    binary = shutil.which("kcat")
    if binary is None:
        raise RuntimeError("kcat is not installed: apt-get install kcat")
    cmd = [binary, "-C", "-b", bootstrap, "-t", topic, "-o", "beginning"]
    cmd += ["-c", str(expect), "-J", "-q", "-u"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        raise AssertionError(
            f"kcat read {len(out.splitlines())} of {expect} records from {topic} in {timeout_s} s"
        ) from exc
    if done.returncode != 0:
        hint = ""
        if "ApiVersionRequest failed" in done.stderr:
            hint = " (against Tansu, start it with TansuBroker(kcat_compatible=True))"
        raise AssertionError(f"kcat failed ({done.returncode}){hint}: {done.stderr.strip()}")
    return [_record(json.loads(line)) for line in done.stdout.splitlines() if line.strip()]


def _record(envelope: dict[str, Any]) -> dict[str, Any]:
    # kcat -J writes headers as a flat list: [name1, value1, name2, value2, ...].
    flat = envelope.get("headers") or []
    return {
        "topic": envelope["topic"],
        "partition": envelope["partition"],
        "offset": envelope["offset"],
        "key": envelope.get("key"),
        "value": envelope.get("payload"),
        "headers": list(zip(flat[0::2], flat[1::2], strict=True)),
    }
