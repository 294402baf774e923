"""Old home of the raw-socket test clients, kept for the modules that still import from it
(test_cluster.py, test_tui.py); new code imports from tests.harness."""

from __future__ import annotations

from tests.harness import WAIT, JsonClient, LineClient, make_certificate

__all__ = ["WAIT", "JsonClient", "LineClient", "make_certificate"]
