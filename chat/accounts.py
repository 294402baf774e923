"""Passwords for accounts: checking, hashing off the event loop, and throttling guesses.

Why each part is here:

* Passwords are hashed with Argon2id (argon2-cffi's :class:`~argon2.PasswordHasher`, whose
  defaults are the RFC 9106 low-memory profile). It is memory-hard on purpose, so that a
  stolen database is slow to attack; the price is ~64 MiB and tens of milliseconds of CPU
  per hash or verify. That work runs in a worker thread (argon2 releases the GIL) so the
  event loop keeps serving every other connection meanwhile.
* At most ``concurrency`` hashes run at once (:class:`Passwords`). Without a bound a burst
  of logins would start one 64 MiB hash per request and could exhaust the machine's memory;
  with it, extra requests just wait their turn.
* Failed logins are throttled per address and per account (:class:`LoginThrottle`) so that
  passwords cannot be guessed quickly, neither by one address trying many accounts nor by
  many addresses trying one account. A throttled login is refused before any hash is
  computed, so guessing cannot buy our CPU either. Its memory is bounded whatever
  attackers send.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

from chat.errors import ErrorCode, ProtocolError

__all__ = [
    "PASSWORD_MAX",
    "PASSWORD_MIN",
    "LoginThrottle",
    "Passwords",
    "check_password",
]

PASSWORD_MIN = 8
PASSWORD_MAX = 128

_T = TypeVar("_T")


def check_password(password: str) -> str:
    """Return ``password`` stripped of surrounding whitespace, or raise ``PASSWORD_INVALID``.

    Surrounding whitespace is dropped because it is almost always a copy-and-paste accident
    that would lock the user out later. Passwords that cannot be encoded as UTF-8 (lone
    surrogates, which JSON can carry) are refused here so that hashing never fails on them.
    The message never repeats the password: errors end up in logs.
    """
    password = password.strip()
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise ProtocolError(
            ErrorCode.PASSWORD_INVALID,
            f"A password is {PASSWORD_MIN} to {PASSWORD_MAX} characters.",
        )
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(
            ErrorCode.PASSWORD_INVALID, "A password must be valid Unicode text."
        ) from None
    return password


class Passwords:
    """Argon2 hashing in worker threads, at most ``concurrency`` at a time.

    A slot is held until the worker thread has finished, even when the awaiting task is
    cancelled (a thread cannot be interrupted), so the bound on memory holds in every case.
    """

    def __init__(self, *, concurrency: int = 2, hasher: PasswordHasher | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._hasher = hasher if hasher is not None else PasswordHasher()
        self._slots = asyncio.Semaphore(concurrency)

    async def hash(self, password: str) -> str:
        """Hash ``password`` (already passed through :func:`check_password`)."""
        return await self._run(self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        """Whether ``password`` matches ``password_hash``; False for a mismatch or a bad hash."""
        return await self._run(self._verify_blocking, password_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with other parameters (cheap: it only parses the hash).

        Call it after a successful :meth:`verify` and store a fresh hash if True, so that
        stored hashes follow the current parameters. An unparsable hash needs one too.
        """
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except ValueError:
            return True

    def _verify_blocking(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, ValueError):
            # VerifyMismatchError (wrong password), InvalidHashError and
            # UnsupportedParametersError (bad hash), UnicodeEncodeError (lone surrogates).
            return False

    async def _run(self, function: Callable[..., _T], *args: str) -> _T:
        """Run ``function`` in the default executor inside a concurrency slot."""
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(None, function, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(self._release)
        # shield: cancelling the caller must not cancel the future (and so release the slot)
        # while the thread is still hashing.
        return await asyncio.shield(future)

    def _release(self, future: asyncio.Future[_T]) -> None:
        self._slots.release()
        if not future.cancelled():
            future.exception()  # Mark it retrieved: a cancelled caller will never look.


class LoginThrottle:
    """Rate limits on failed logins, per address and per account, in bounded memory.

    Each key keeps a sliding window: the timestamps of its most recent failures, in a
    ``deque`` holding at most ``limit`` of them. A key is throttled while it has ``limit``
    failures newer than ``window`` seconds, that is while its oldest kept timestamp is; it
    may try again once that one is ``window`` old.

    Each table keeps at most ``max_keys`` keys, ordered by their latest failure. Keys whose
    latest failure has left the window are dropped lazily (on :meth:`check` and when adding
    a key); when the table is still full, the key that failed least recently goes. A flood
    of distinct keys can thus make the throttle forget a key, but only by itself failing
    that many logins, which the other table limits.

    ``address`` is whatever the caller throttles by (an IPv4 address, an IPv6 /64...);
    ``account`` is an already normalised account key.
    """

    def __init__(
        self,
        *,
        per_address: int = 5,
        per_account: int = 10,
        window: float = 60.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_address < 1 or per_account < 1 or max_keys < 1:
            raise ValueError("per_address, per_account and max_keys must be at least 1")
        if window <= 0:
            raise ValueError("window must be positive")
        self._window = window
        self._clock = clock
        self._addresses = _FailureTable(per_address, max_keys)
        self._accounts = _FailureTable(per_account, max_keys)

    @property
    def tracked_addresses(self) -> int:
        """How many addresses are remembered (at most ``max_keys``)."""
        return len(self._addresses.failures)

    @property
    def tracked_accounts(self) -> int:
        """How many accounts are remembered (at most ``max_keys``)."""
        return len(self._accounts.failures)

    def check(self, address: str, account: str) -> None:
        """Raise ``LOGIN_THROTTLED`` if ``address`` or ``account`` has failed too often."""
        now = self._clock()
        horizon = now - self._window
        address_until = self._addresses.throttled_until(address, horizon)
        account_until = self._accounts.throttled_until(account, horizon)
        if address_until is None and account_until is None:
            return
        what = "from this address" if address_until is not None else "for this account"
        until = max(t for t in (address_until, account_until) if t is not None)
        seconds = max(1, math.ceil(until + self._window - now))
        raise ProtocolError(
            ErrorCode.LOGIN_THROTTLED,
            f"Too many failed logins {what}; try again in {seconds} second"
            f"{'' if seconds == 1 else 's'}.",
        )

    def failed(self, address: str, account: str) -> None:
        """Record a failed login by ``address`` for ``account``."""
        now = self._clock()
        horizon = now - self._window
        self._addresses.add(address, now, horizon)
        self._accounts.add(account, now, horizon)

    def succeeded(self, address: str, account: str) -> None:
        """Forget the failures of ``address``: whoever is there knows a password.

        The account's failures stay, since other addresses may still be guessing at it.
        """
        del account  # Part of the signature so callers need not know the policy.
        self._addresses.failures.pop(address, None)


class _FailureTable:
    """Per-key failure timestamps, in latest-failure order.

    An ``OrderedDict`` rather than a ``dict``: dropping its first key is O(1), where a dict
    scans past the holes left by earlier deletions.
    """

    __slots__ = ("failures", "limit", "max_keys")

    def __init__(self, limit: int, max_keys: int) -> None:
        self.limit = limit
        self.max_keys = max_keys
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()

    def throttled_until(self, key: str, horizon: float) -> float | None:
        """The timestamp whose expiry ends the throttle of ``key``, or None if not throttled."""
        times = self.failures.get(key)
        if times is None:
            return None
        if times[-1] <= horizon:
            del self.failures[key]  # Lazy expiry: nothing of it is left in the window.
            return None
        if len(times) < self.limit or times[0] <= horizon:
            return None
        return times[0]

    def add(self, key: str, now: float, horizon: float) -> None:
        times = self.failures.get(key)
        if times is None:
            self._make_room(horizon)
            times = self.failures[key] = deque(maxlen=self.limit)
        else:
            self.failures.move_to_end(key)  # Now the most recently failed.
        times.append(now)

    def _make_room(self, horizon: float) -> None:
        """Drop expired keys from the old end, then the oldest, until a new key fits."""
        failures = self.failures
        while failures:
            oldest = next(iter(failures))
            if failures[oldest][-1] > horizon and len(failures) < self.max_keys:
                break
            failures.popitem(last=False)
