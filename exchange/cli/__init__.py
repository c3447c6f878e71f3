"""The ``exchange`` command: run the server, manage partners, submit and watch the feed,
review the audit log.

One module per command group: ``ops`` (``db``, ``config``, ``health``), ``admin``
(``partner``, ``community``, ``token``), ``audit``, and the partner commands
(``submit``, ``subscribe``, ``get``, ``sighting``, ``revoke``), which are built on
the SDK alone; ``_main`` is the group and ``serve``. Shared pieces: ``_options``
(command-line options), ``_output`` (the one error prefix, exit codes, JSON lines),
``_time`` (time options).
"""

from exchange.cli._main import main

__all__ = ["main"]
