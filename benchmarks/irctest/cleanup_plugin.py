"""pytest plugin for running irctest against ONE long-running server.

irctest's cases disconnect their clients in ``tearDown()``, which unittest skips when
``setUp()`` raises (a skip for a missing capability, a timeout). Against a server started
per test that is harmless; against one long-running server the leaked connection keeps
its nickname, and the next test of the class waits forever on 433. This closes every
client still open once a test has finished.
"""

import contextlib
import time

import pytest


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_teardown(item, nextitem):  # type: ignore[no-untyped-def]
    clients = getattr(getattr(item, "instance", None), "clients", None) or {}
    leaked = list(clients)
    for name in leaked:
        with contextlib.suppress(Exception):
            clients[name].disconnect()
        clients.pop(name, None)
    if leaked:
        time.sleep(0.3)  # the server sees the closes before the next test connects
    yield
