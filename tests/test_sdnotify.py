"""laned.health.sdnotify against a real datagram socket standing in for systemd.

The test owns the NOTIFY_SOCKET: a receiver thread records every datagram with the
monotonic time it arrived, so "no ping while X" is checked by timestamps, not by
trusting the sender's counters. Timing assertions are loose on purpose (noisy CI).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from laned.health.sdnotify import Notifier, Watchdog, watchdog_loop

LOGGER = "laned.health.sdnotify"


class Receiver:
    """What systemd does with NOTIFY_SOCKET, minus the acting on it."""

    def __init__(self, address: str | bytes) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.02)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-receiver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode("utf-8")))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def texts(self) -> list[str]:
        return [m for _, m in self.messages]

    def pings(self) -> list[float]:
        return [t for t, m in self.messages if "WATCHDOG=1" in m.splitlines()]

    def statuses(self) -> list[str]:
        return [line[len("STATUS="):] for _, m in self.messages for line in m.splitlines()
                if line.startswith("STATUS=")]

    def wait_for(self, predicate, timeout: float = 3.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()


@pytest.fixture
def sock_path(tmp_path: Path):
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) < 100:  # sun_path holds 108 bytes
        yield str(path)
        return
    short = tempfile.mkdtemp(prefix="sdn-")
    try:
        yield os.path.join(short, "n.sock")
    finally:
        for name in os.listdir(short):
            os.unlink(os.path.join(short, name))
        os.rmdir(short)


@pytest.fixture
def receiver(sock_path: str):
    r = Receiver(sock_path)
    yield r
    r.close()


def env(path: str, **extra: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": path, **extra}


async def run_for(coro, seconds: float) -> asyncio.Task:
    task = asyncio.create_task(coro, name="watchdog")
    await asyncio.sleep(seconds)
    return task


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def in_window(times: list[float], start: float, end: float) -> list[float]:
    return [t for t in times if start < t < end]


# -- the messages -----------------------------------------------------------------------


def test_ready_status_stopping_arrive_as_sd_notify_lines(receiver: Receiver, sock_path: str) -> None:
    n = Notifier.from_env(env(sock_path))
    assert n.enabled and n.watchdog_interval is None
    assert n.ready("starting: opening the journal")
    assert n.status("in service\nRSU connected\r\n")          # newlines collapse
    assert not n.status("in service RSU connected")            # unchanged: not resent
    assert n.status("degraded: RSU link down")
    assert n.notify(EXTEND_TIMEOUT_USEC=5_000_000)
    assert n.stopping()
    assert receiver.wait_for(lambda: len(receiver.messages) == 5)
    assert receiver.texts() == [
        "READY=1\nSTATUS=starting: opening the journal\n",
        "STATUS=in service RSU connected\n",
        "STATUS=degraded: RSU link down\n",
        "EXTEND_TIMEOUT_USEC=5000000\n",
        "STOPPING=1\n",
    ]
    assert n.last_status == "degraded: RSU link down"


def test_from_default_environment(receiver: Receiver, sock_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", sock_path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert Notifier.from_env().ready()
    assert receiver.wait_for(lambda: receiver.texts() == ["READY=1\n"])


def test_field_names_must_be_sd_notify_keys(sock_path: str) -> None:
    n = Notifier.from_env(env(sock_path))
    with pytest.raises(ValueError):
        n.notify(ready=1)


@pytest.mark.parametrize(("extra", "expected"), [
    ({"WATCHDOG_USEC": "200000"}, 0.1),
    ({"WATCHDOG_USEC": "10000000"}, 5.0),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}, 0.1),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),  # someone else's watchdog
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval_is_half_watchdog_usec_if_ours(sock_path: str, extra: dict, expected: float | None) -> None:
    assert Notifier.from_env(env(sock_path, **extra)).watchdog_interval == expected


def test_abstract_namespace_socket() -> None:
    name = f"laned-test-{uuid.uuid4().hex}"
    r = Receiver(b"\0" + name.encode())
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.enabled
        assert n.ready("in service")
        assert r.wait_for(lambda: r.texts() == ["READY=1\nSTATUS=in service\n"])
    finally:
        r.close()


async def test_without_notify_socket_everything_is_a_quiet_noop(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    n = Notifier.from_env()
    assert not n.enabled and n.watchdog_interval is None
    assert not any([n.ready("x"), n.status("y"), n.watchdog(), n.stopping(), n.notify(READY=1), n.set_fault("z")])
    task = await run_for(watchdog_loop(n, lambda: None, interval=0.05), 0.2)
    assert not task.done()
    await stop(task)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- the watchdog -----------------------------------------------------------------------


async def test_watchdog_pings_at_half_watchdog_usec(receiver: Receiver, sock_path: str) -> None:
    n = Notifier.from_env(env(sock_path, WATCHDOG_USEC="200000"))   # 200 ms → a ping every ~100 ms
    task = await run_for(watchdog_loop(n, lambda: None), 1.0)
    await stop(task)
    receiver.wait_for(lambda: len(receiver.pings()) >= 5)
    pings = receiver.pings()
    assert 5 <= len(pings) <= 15, pings          # ~11 expected; loose for noisy machines
    gaps = sorted(b - a for a, b in zip(pings, pings[1:]))
    assert 0.05 < gaps[len(gaps) // 2] < 0.3, gaps   # the median gap is about the interval


async def test_pings_withheld_while_unhealthy_and_resume_after(receiver: Receiver, sock_path: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    n = Notifier.from_env(env(sock_path, WATCHDOG_USEC="200000"))
    n.ready("in service")
    reason: list[str | None] = [None]
    task = await run_for(watchdog_loop(n, lambda: reason[0]), 0.35)
    reason[0] = "journal writer not alive"
    t_bad = time.monotonic()
    await asyncio.sleep(0.6)
    reason[0] = None
    t_good = time.monotonic()
    await asyncio.sleep(0.5)
    await stop(task)
    pings = receiver.pings()
    assert len(in_window(pings, 0, t_bad)) >= 2
    assert in_window(pings, t_bad + 0.05, t_good) == []          # nothing while unhealthy
    assert len(in_window(pings, t_good, float("inf"))) >= 2       # and back after
    assert receiver.statuses() == ["in service", "UNHEALTHY: journal writer not alive | in service", "in service"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "journal writer not alive" in errors[0]   # once per change, not per tick


async def test_a_health_check_that_raises_counts_as_unhealthy(receiver: Receiver, sock_path: str) -> None:
    n = Notifier.from_env(env(sock_path, WATCHDOG_USEC="200000"))

    def broken() -> str | None:
        raise RuntimeError("executor gone")

    task = await run_for(watchdog_loop(n, broken), 0.4)
    assert not task.done()                                       # the loop survives its check
    await stop(task)
    assert receiver.pings() == []
    assert receiver.statuses() == ["UNHEALTHY: health check failed: RuntimeError: executor gone"]


async def test_no_ping_while_the_event_loop_is_blocked(receiver: Receiver, sock_path: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    n = Notifier.from_env(env(sock_path, WATCHDOG_USEC="200000"))
    wd = Watchdog(n, lambda: None)
    task = await run_for(wd.run(), 0.35)
    window: list[float] = []

    def block() -> None:                                         # a synchronous call that hangs
        window.append(time.monotonic())
        time.sleep(0.6)
        window.append(time.monotonic())

    asyncio.get_running_loop().call_soon(block)
    await asyncio.sleep(0.6 + 0.5)                               # the block, then half a second
    await stop(task)
    t0, t1 = window
    pings = receiver.pings()
    assert len(in_window(pings, 0, t0)) >= 2
    assert in_window(pings, t0 + 0.05, t1) == []                 # the point: blocked loop, no ping
    assert len(in_window(pings, t1, float("inf"))) >= 2          # responsive again: pings resume
    assert wd.blocks >= 1 and wd.longest_block > 0.3             # and the stall was measured
    assert any(r.levelno == logging.ERROR and "event loop was blocked" in r.getMessage() for r in caplog.records)


async def test_socket_deleted_mid_run_is_survived_and_logged_once(sock_path: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    first = Receiver(sock_path)
    n = Notifier.from_env(env(sock_path, WATCHDOG_USEC="100000"))   # a ping every 50 ms
    task = await run_for(watchdog_loop(n, lambda: None), 0.3)
    assert first.wait_for(lambda: len(first.pings()) >= 2)
    first.close()
    os.unlink(sock_path)                                         # systemd's socket is gone
    await asyncio.sleep(0.4)
    assert not n.status("still here") and not n.ready()          # no exception either
    assert not task.done()
    assert n.failures >= 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot notify systemd" in warnings[0]
    second = Receiver(sock_path)                                 # it comes back (PID 1 re-exec)
    try:
        await asyncio.sleep(0.3)
        await stop(task)
        assert len(second.pings()) >= 2
        assert any("notifying systemd at" in r.getMessage() and "again" in r.getMessage()
                   for r in caplog.records if r.levelno == logging.WARNING)
    finally:
        second.close()


async def test_cancelling_the_watchdog_task_propagates(sock_path: str) -> None:
    n = Notifier.from_env(env(sock_path, WATCHDOG_USEC="200000"))   # nobody listening: fine too

    async def owner() -> None:
        await watchdog_loop(n, lambda: None)

    task = await run_for(owner(), 0.15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
