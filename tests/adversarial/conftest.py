"""The attack suite's fixtures: real exchange processes (tests/adversarial/harness.py)."""

from tests.adversarial.harness import exchange_factory

__all__ = ["exchange_factory"]
