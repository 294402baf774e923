"""chat.accounts alone: password rules, hashing off the loop within its bound, the throttle.

Hashing tests use a cheap argon2 hasher except where the real cost is the point (the loop
staying responsive). Concurrency is observed with threading primitives, never with sleeps;
the throttle runs on a fake clock.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
from argon2 import PasswordHasher

from chat.accounts import (
    PASSWORD_MAX,
    PASSWORD_MIN,
    LoginThrottle,
    Passwords,
    check_password,
)
from chat.errors import ErrorCode, ProtocolError

WAIT = 10.0  # bound on every wait for something that must happen
GRACE = 0.2  # how long we give something that must not happen the chance to


def cheap() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class GatedHasher(PasswordHasher):
    """A cheap hasher whose ``hash`` signals entry then blocks until ``go``; counts the peak."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.calls = 0
        self.entered = threading.Semaphore(0)
        self.go = threading.Event()

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        with self.lock:
            self.active += 1
            self.calls += 1
            self.peak = max(self.peak, self.active)
        self.entered.release()
        try:
            if not self.go.wait(WAIT):
                raise TimeoutError("the test never released the hasher")
            return super().hash(password, salt=salt)
        finally:
            with self.lock:
                self.active -= 1

    async def wait_entered(self, count: int) -> None:
        for _ in range(count):
            assert await in_own_thread(self.entered.acquire, WAIT)

    async def another_entered(self) -> bool:
        return await in_own_thread(self.entered.acquire, GRACE)


async def in_own_thread(acquire: Callable[[bool, float], bool], timeout: float) -> bool:
    """``acquire(True, timeout)`` in a thread of its own, not the executor under test."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()

    def run() -> None:
        loop.call_soon_threadsafe(done.set_result, acquire(True, timeout))

    threading.Thread(target=run, daemon=True).start()
    return await done


# --- check_password -------------------------------------------------------------------------


def test_password_bounds() -> None:
    assert check_password("a" * PASSWORD_MIN) == "a" * PASSWORD_MIN
    assert check_password("a" * PASSWORD_MAX) == "a" * PASSWORD_MAX
    assert check_password("é" * PASSWORD_MIN) == "é" * PASSWORD_MIN  # characters, not bytes
    for bad in ("", "a" * (PASSWORD_MIN - 1), "a" * (PASSWORD_MAX + 1)):
        with pytest.raises(ProtocolError) as caught:
            check_password(bad)
        assert caught.value.code is ErrorCode.PASSWORD_INVALID
        assert caught.value.message == "A password is 8 to 128 characters."


def test_password_stripped_before_counting() -> None:
    assert check_password("  secret pw \t\n") == "secret pw"
    with pytest.raises(ProtocolError):
        check_password("   short1   ")  # 6 characters once stripped


def test_password_never_in_message() -> None:
    for bad in ("hunter2", "x" * 200 + "hunter2"):
        with pytest.raises(ProtocolError) as caught:
            check_password(bad)
        assert "hunter2" not in str(caught.value)


def test_password_not_utf8_refused() -> None:
    with pytest.raises(ProtocolError) as caught:
        check_password("password\ud800")
    assert caught.value.code is ErrorCode.PASSWORD_INVALID


# --- Passwords ------------------------------------------------------------------------------


async def test_hash_verify_round_trip() -> None:
    passwords = Passwords(hasher=cheap())
    password_hash = await passwords.hash("correct horse")
    assert password_hash.startswith("$argon2id$")
    assert "correct horse" not in password_hash
    assert await passwords.verify(password_hash, "correct horse")
    assert not await passwords.verify(password_hash, "correct horsE")
    assert not await passwords.verify(password_hash, "")


async def test_verify_garbage_hash_is_false() -> None:
    passwords = Passwords(hasher=cheap())
    for garbage in ("", "not a hash", "$argon2id$v=19$m=8,t=1,p=1$bad", "$2b$12$" + "a" * 53):
        assert not await passwords.verify(garbage, "correct horse")


async def test_verify_unencodable_password_is_false() -> None:
    passwords = Passwords(hasher=cheap())
    password_hash = await passwords.hash("correct horse")
    assert not await passwords.verify(password_hash, "correct horse\ud800")


async def test_needs_rehash() -> None:
    passwords = Passwords(hasher=cheap())
    password_hash = await passwords.hash("correct horse")
    assert not passwords.needs_rehash(password_hash)
    assert Passwords().needs_rehash(password_hash)  # default parameters are stronger
    assert passwords.needs_rehash("not a hash")


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Passwords(concurrency=0)


async def test_concurrency_bounded() -> None:
    hasher = GatedHasher()
    passwords = Passwords(concurrency=2, hasher=hasher)
    tasks = [asyncio.create_task(passwords.hash(f"password {i}")) for i in range(6)]
    try:
        await hasher.wait_entered(2)
        assert not await hasher.another_entered()
        assert hasher.active == 2
    finally:
        hasher.go.set()
    hashes = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    assert hasher.peak == 2
    assert hasher.calls == 6
    for i, password_hash in enumerate(hashes):
        assert await passwords.verify(password_hash, f"password {i}")


async def test_cancelled_caller_keeps_slot_until_thread_ends() -> None:
    """A thread cannot be stopped, so its memory is in use until it ends: so is its slot."""
    hasher = GatedHasher()
    passwords = Passwords(concurrency=1, hasher=hasher)
    first = asyncio.create_task(passwords.hash("password 1"))
    try:
        await hasher.wait_entered(1)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        second = asyncio.create_task(passwords.hash("password 2"))
        assert not await hasher.another_entered()
    finally:
        hasher.go.set()
    password_hash = await asyncio.wait_for(second, WAIT)
    assert hasher.peak == 1
    assert await passwords.verify(password_hash, "password 2")


async def test_loop_responsive_while_hashing() -> None:
    """A real (default, ~64 MiB) hash runs while the loop keeps running callbacks."""
    passwords = Passwords()
    ticks = 0
    hashing = asyncio.create_task(passwords.hash("correct horse battery"))
    while not hashing.done():
        await asyncio.sleep(0)
        ticks += 1
    # Hashing on the loop itself would leave room for about one tick.
    assert ticks >= 20
    password_hash = hashing.result()
    assert not passwords.needs_rehash(password_hash)

    ticks = 0
    verifying = asyncio.create_task(passwords.verify(password_hash, "correct horse battery"))
    while not verifying.done():
        await asyncio.sleep(0)
        ticks += 1
    assert ticks >= 20
    assert verifying.result()


# --- LoginThrottle --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttled(throttle: LoginThrottle, address: str, account: str) -> str | None:
    """The refusal's message, or None when the login may be tried."""
    try:
        throttle.check(address, account)
    except ProtocolError as error:
        if error.code is not ErrorCode.LOGIN_THROTTLED:
            raise
        return error.message
    return None


def test_per_address() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(per_address=5, per_account=10, window=60.0, clock=clock)
    for i in range(4):
        throttle.failed("10.0.0.1", f"account{i}")
    assert throttled(throttle, "10.0.0.1", "other") is None
    throttle.failed("10.0.0.1", "account4")
    assert throttled(throttle, "10.0.0.1", "other") == (
        "Too many failed logins from this address; try again in 60 seconds."
    )
    assert throttled(throttle, "10.0.0.2", "account0") is None


def test_per_account() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(per_address=5, per_account=10, window=60.0, clock=clock)
    for i in range(10):
        assert throttled(throttle, f"10.0.0.{i}", "alice") is None
        throttle.failed(f"10.0.0.{i}", "alice")
    message = throttled(throttle, "10.9.9.9", "alice")
    assert message is not None
    assert "for this account" in message
    assert throttled(throttle, "10.9.9.9", "bob") is None


def test_window_slides() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(per_address=5, window=60.0, clock=clock)
    start = clock.now
    for _ in range(5):
        throttle.failed("10.0.0.1", "alice")
        clock.now += 1.0
    assert throttled(throttle, "10.0.0.1", "alice") == (
        "Too many failed logins from this address; try again in 55 seconds."
    )
    clock.now = start + 59.5
    assert throttled(throttle, "10.0.0.1", "alice") == (
        "Too many failed logins from this address; try again in 1 second."
    )
    clock.now = start + 60.0  # the first failure has left the window; four remain
    assert throttled(throttle, "10.0.0.1", "alice") is None
    throttle.failed("10.0.0.1", "alice")
    assert throttled(throttle, "10.0.0.1", "alice") is not None  # until start + 61
    clock.now = start + 61.0
    assert throttled(throttle, "10.0.0.1", "alice") is None


def test_many_failures_keep_the_latest() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(per_address=5, per_account=1000, window=60.0, clock=clock)
    for _ in range(100):
        throttle.failed("10.0.0.1", "alice")
        clock.now += 1.0
    # The last five failures were at +95..+99; now is +100: free at +155.
    message = throttled(throttle, "10.0.0.1", "alice")
    assert message is not None
    assert message.endswith("try again in 55 seconds.")


def test_expired_keys_are_forgotten() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(window=60.0, clock=clock)
    for i in range(10):
        throttle.failed(f"10.0.0.{i}", f"account{i}")
    assert (throttle.tracked_addresses, throttle.tracked_accounts) == (10, 10)
    clock.now += 60.0
    assert throttled(throttle, "10.0.0.0", "account0") is None
    assert (throttle.tracked_addresses, throttle.tracked_accounts) == (9, 9)
    throttle.failed("10.1.1.1", "fresh")  # adding a key sweeps the expired ones
    assert (throttle.tracked_addresses, throttle.tracked_accounts) == (1, 1)


def test_succeeded_clears_address_not_account() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(per_address=5, per_account=10, clock=clock)
    for _ in range(4):
        throttle.failed("10.0.0.1", "alice")
    for _ in range(5):
        throttle.failed("10.0.0.2", "alice")
    assert throttled(throttle, "10.0.0.2", "bob") is not None
    throttle.failed("10.0.0.3", "alice")
    assert throttled(throttle, "10.0.0.1", "bob") is None
    assert throttled(throttle, "10.0.0.4", "alice") is not None  # ten for alice

    throttle.succeeded("10.0.0.2", "alice")
    assert throttled(throttle, "10.0.0.2", "bob") is None
    assert throttled(throttle, "10.0.0.4", "alice") is not None  # alice's failures stay
    assert throttle.tracked_addresses == 2
    for _ in range(4):
        throttle.failed("10.0.0.2", "bob")
    assert throttled(throttle, "10.0.0.2", "carol") is None  # counting restarted at zero


def test_memory_bounded() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(max_keys=10_000, clock=clock)
    for i in range(20_000):
        throttle.failed(f"2001:db8::{i:x}", f"account{i}")
        assert throttle.tracked_addresses <= 10_000
        assert throttle.tracked_accounts <= 10_000
    assert (throttle.tracked_addresses, throttle.tracked_accounts) == (10_000, 10_000)
    # The most recent keys are the ones kept.
    for _ in range(4):
        throttle.failed("2001:db8::4e1f", "account19999")
    assert throttled(throttle, "2001:db8::4e1f", "x") is not None
    for _ in range(5):
        throttle.failed("2001:db8::0", "account0")  # forgotten, so counted from zero
    assert throttled(throttle, "2001:db8::0", "x") is not None
    assert throttle.tracked_addresses == 10_000


def test_bad_limits_refused() -> None:
    for kwargs in ({"per_address": 0}, {"per_account": 0}, {"max_keys": 0}, {"window": 0.0}):
        with pytest.raises(ValueError, match=r"at least 1|positive"):
            LoginThrottle(**kwargs)
