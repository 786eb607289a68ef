"""The composition root: configuration → drivers, journal, lane machine, executor.

``run_lane`` builds every part from a validated :class:`~laned.config.Config` and runs
every long-running task — the lane executor, each driver's supervisor, the udev hotplug
follower, health, the systemd watchdog and, with ``[uplink]``, the centre link — in **one**
``asyncio.TaskGroup``, each task named. The centre link being down is a handled fault
(an alarm; the journal is the outbox), never a reason to stop the lane. Device faults are lane events (degraded modes), never exceptions; anything else
that ends a task ends ``run_lane`` with :class:`LaneTaskFailed` naming the task, so
``laned run`` exits non-zero, systemd restarts it and the journal's crash recovery runs.
SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

from laned.config import Config, UplinkSection
from laned.device_setup import Buses, make_display, make_io, make_rsu, warn_shared_bus
from laned.drivers.fee_display import FeeDisplay
from laned.drivers.lane_io import LaneIO
from laned.drivers.rsu import FrameDropped, LinkItem, LinkStatus, RsuFrame, RsuLink
from laned.drivers.tasks import watch
from laned.executor import LaneExecutor
from laned.health.alarms import AlarmRegistry
from laned.health.monitor import HealthMonitor
from laned.health.sdnotify import Notifier, Watchdog
from laned.lane.events import Device, DeviceStatus, FrameIn, FrameLost, LinkLost, LinkUp
from laned.lane.fee_table import FeeSchedule
from laned.lane.machine import LaneMachine
from laned.lane.status_list import StatusList, StatusListError, StatusListUnreadable
from laned.protocol import get_profile
from laned.uplink.list_apply import StatusListInUse, load_fee_tables, load_status_list, set_aside_corrupt

if TYPE_CHECKING:
    from laned.uplink.list_service import ListService

log = logging.getLogger("laned")
T = TypeVar("T")

# The watchdog is fed only while the lane's own task has handled an event this recently:
# the ticker posts one every 50 ms, so a lane task stuck for this long is wedged.
LANE_STUCK_S = 2.0

# At start, how long to wait for the RSU's first open attempt (or connection) before the
# lane announces itself in service or degraded: an unopenable port fails at once, a TCP
# connect within its own timeout.
STARTUP_RSU_WAIT_S = 2.0


class LaneTaskFailed(Exception):
    """A long-running task of the lane ended unexpectedly: laned must exit non-zero."""

    def __init__(self, task: str, error: BaseException) -> None:
        self.task = task
        self.error = error
        super().__init__(f"task {task} failed: {type(error).__name__}: {error}")


class _Stopping(Exception):
    """Raised inside the task group to end it when a stop was asked for."""


class NotifyingJournal:
    """The journal writer as the executor submits to it, telling ``notify`` (on the event
    loop) after each operation: a row that just became final goes to the centre at once
    instead of at the uplink's next scan."""

    def __init__(self, writer: Any, notify: Callable[[], None], loop: asyncio.AbstractEventLoop) -> None:
        self._writer = writer
        self._notify = notify
        self._loop = loop

    def submit(self, op: Callable[[Any], T], *, group: bool = False) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = self._writer.submit(op, group=group)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: concurrent.futures.Future[Any]) -> None:  # on the writer thread
        if self._loop.is_closed():
            return  # the daemon is gone; the next start scans the outbox anyway
        try:
            self._loop.call_soon_threadsafe(self._notify)
        except RuntimeError:  # the loop closed between the check and the call
            pass


def lane_clock(timezone: str | dt.tzinfo, *,
               now: Callable[[], dt.datetime] | None = None) -> Callable[[], dt.datetime]:
    """The lane's civil clock (the daemon's ``wall``): the current time in the lane's time
    zone (``lane.timezone``), aware — never the host's local time.

    Everything that reads it gets one instant with the lane's offset: the lane machine
    takes dates (contract and card validity) and the C6 purchase and C0 clock times from
    its civil fields, the journal stamps rows with its ISO form (offset included) and its
    unix time, health compares it with the monotonic clock (an aware time never jumps at a
    daylight-saving change). ``now`` gives the current instant (aware, any zone; tests
    inject a fixed one); by default the system clock.
    """
    zone = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
    if now is None:
        return lambda: dt.datetime.now(zone)
    read = now

    def wall() -> dt.datetime:
        t = read()
        if t.tzinfo is None:
            raise ValueError(f"lane_clock: now() gave {t.isoformat()}, a naive time; give an aware one (UTC)")
        return t.astimezone(zone)

    return wall


def load_fees(cfg: Config, now: dt.datetime | None = None) -> tuple[FeeSchedule | None, str]:
    """The fee schedule — the tables the centre sent (``lists.fee_table_dir``) and the
    configured file, the newest valid one in force, a later one pending — or None and why:
    a lane without one starts with ETC closed. Its times are the lane's (``lane.timezone``)."""
    zone = ZoneInfo(cfg.lane.timezone)
    schedule, problems = load_fee_tables(cfg.lists.fee_table_dir, cfg.fee_table.path, now or dt.datetime.now(zone),
                                         zone)
    if schedule is None:
        return None, f"no usable fee table: {'; '.join(problems)}"
    for problem in problems:  # a damaged file beside a usable one: said, not fatal
        log.warning("fee table: %s; not used", problem)
    return schedule, ""


def load_status(cfg: Config) -> StatusListInUse | None:
    """The status list file and the manifest kept beside it (``status_list.path``), if any.

    A file whose bytes are wrong is moved aside (``<path>.corrupt``, for the field engineer)
    and the lane starts with no list — ``status_list_missing`` — rather than not at all: a
    lane that stops at start never runs to take the centre's replacement. A file the system
    will not read (permission, I/O error) may be good: it stays where it is and the start
    fails with :class:`StatusListUnreadable`, as for a configuration error — moving it aside
    would throw away a good list for a fault that is the disk's or the file owner's."""
    if cfg.status_list is None or not cfg.status_list.path.exists():
        return None
    path = cfg.status_list.path
    try:
        return load_status_list(path)
    except StatusListUnreadable:
        raise
    except StatusListError as err:
        moved, problems = set_aside_corrupt(path)
        log.error("status list: %s. Moved aside for inspection: %s. laned starts with no status list (alarm "
                  "status_list_missing; no OBU or card is refused as listed) until the centre's list arrives: its "
                  "retained manifest is taken on connecting (a full list: a delta is refused base_mismatch)", err,
                  "; ".join([*map(str, moved), *problems]) or "nothing")
        return None


def status_valid_from(cfg: Config, status: StatusListInUse | None, zone: dt.tzinfo) -> dt.datetime | None:
    """What the health check ages the status list by: its manifest's ``valid_from``. A
    list without one is of unknown age: with ``[uplink]`` the list service counts it as old
    (docs/lists.md, freeze attack); a lane without a centre link has only the file's time."""
    if status is None:
        return None
    if status.manifest is not None:
        return status.manifest.valid_from
    if cfg.uplink is None and cfg.status_list is not None:
        return dt.datetime.fromtimestamp(cfg.status_list.path.stat().st_mtime, zone)
    return None


def make_list_service(cfg: Config, uplink: UplinkSection, machine: LaneMachine, monitor: HealthMonitor,
                      status: StatusListInUse | None, fees: FeeSchedule | None, *, post: Callable[[Any], None],
                      wall: Callable[[], dt.datetime]) -> ListService:
    """The status list and fee table downloads (docs/lists.md). Installing a version swaps
    the lane machine's and the health monitor's references in one synchronous step."""
    from laned.uplink.commands import CentreKeys
    from laned.uplink.list_service import Installers, ListService, settings_from_config

    def use_status(made: StatusListInUse) -> None:
        machine.status = made.store
        monitor.status_list = made.store
        monitor.status_list_loaded_at = made.manifest.valid_from if made.manifest is not None else None

    def use_fees(schedule: FeeSchedule) -> None:
        had_none = machine.fees is None
        machine.fees = schedule
        monitor.fees = schedule
        if had_none:  # ETC was closed for want of a table (run_lane posted it)
            log.info("fee table: version %d in force; ETC reopens if nothing else keeps it closed", schedule.version)
            post(DeviceStatus(Device.FEES, True, ""))

    settings = settings_from_config(cfg.lists, status_list_path=cfg.status_list.path if cfg.status_list else None,
                                    max_age_s=cfg.health.status_list_max_age_h * 3600)
    return ListService(lane_id=cfg.lane.lane_id, keys=CentreKeys.from_texts(uplink.centre_keys),
                       settings=settings, status=status, fees=fees,
                       install=Installers(status_list=use_status, fee_table=use_fees), wall=wall,
                       tz=ZoneInfo(cfg.lane.timezone), alarm=monitor.lane_alarm, post=post)


async def follow_hotplug(watcher: Any, rsu: RsuLink) -> None:
    """Close the RSU link at once when its adapter is unplugged; reopen it on replug."""
    from laned.drivers.hotplug import DeviceAdded, DeviceRemoved

    async for ev in watcher.events():
        if isinstance(ev, DeviceRemoved):
            log.warning("rsu: adapter %s unplugged; link closed, ETC closed until it is back", ev.devnode)
            await rsu.device_removed()
        elif isinstance(ev, DeviceAdded):
            log.info("rsu: adapter %s plugged in; reopening", ev.devnode)
            rsu.device_added(ev.devnode)


def rsu_feed(executor: LaneExecutor, stop: asyncio.Event) -> Callable[[LinkItem], None]:
    """The RSU link's items, in order, as lane events."""
    ever_connected = False

    def feed(item: LinkItem) -> None:
        nonlocal ever_connected
        if isinstance(item, RsuFrame):
            executor.post(FrameIn(item.message, item.rsctl))
        elif isinstance(item, FrameDropped):
            executor.post(FrameLost(item.reason))
        elif isinstance(item, LinkStatus):
            if item.connected:
                ever_connected = True
                log.info("rsu: connected; initialising it (C0)")
                executor.post(LinkUp())
                return
            if stop.is_set():
                log.info("rsu: link closed (the lane is stopping)")
            elif not ever_connected:
                log.warning("rsu: not available (%s); ETC closed until it answers", item.reason)
            else:
                log.warning("rsu: link lost (%s); ETC closed, an in-flight charge is recorded as unknown",
                            item.reason)
            executor.post(LinkLost(item.reason))

    return feed


async def _named(name: str, work: Awaitable[None]) -> None:
    try:
        await work
    except (asyncio.CancelledError, _Stopping):
        raise
    except Exception as err:
        # A task with its own group (the executor) fails with a group of one: name the
        # error itself, which is what the operator's one log line must show.
        while isinstance(err, ExceptionGroup) and len(err.exceptions) == 1:
            err = err.exceptions[0]
        raise LaneTaskFailed(name, err) from err


async def watch_writer(writer: Any) -> None:
    """End with the journal writer's death: a lane that cannot journal must restart."""
    loop = asyncio.get_running_loop()
    died: asyncio.Future[None] = loop.create_future()

    def on_death(err: BaseException) -> None:  # on the writer's thread
        def fail() -> None:
            if not died.done():
                died.set_exception(err)

        loop.call_soon_threadsafe(fail)

    writer.on_death(on_death)
    await died


async def _first_rsu_attempt(rsu: RsuLink) -> None:
    """Wait, at most STARTUP_RSU_WAIT_S, until the link has tried once: its status leaves
    "not started" (connected, or cannot open)."""
    attempted = asyncio.Event()
    rsu.on_status(lambda status: attempted.set())
    if rsu.status.reason != "not started":
        return
    with suppress(TimeoutError):
        async with asyncio.timeout(STARTUP_RSU_WAIT_S):
            await attempted.wait()


async def run_lane(cfg: Config, *, stop: asyncio.Event | None = None,
                   observe: Any = None, uevent_source: Any = None,
                   notifier: Notifier | None = None, wall: Callable[[], dt.datetime] | None = None,
                   journal_options: dict[str, Any] | None = None,
                   started: Callable[[LaneExecutor], None] | None = None) -> LaneExecutor:
    """Run the lane until ``stop`` is set (or SIGTERM); returns the executor for inspection
    (its ``health`` is the health monitor, with every alarm change).

    Raises :class:`LaneTaskFailed` when a task ended unexpectedly. ``wall`` (the lane's
    civil clock; default :func:`lane_clock` in ``lane.timezone``) and ``journal_options``
    (``commit_delay_s``, ``commit_hook`` of :meth:`JournalWriter.open`) are for
    fault-injection tests and benchmarks — a naive ``wall`` is lane time to the machine and
    the host's local time to the journal and health, so give an aware one; ``started`` is
    called with the executor once everything runs (its ``rsu`` is the link, for a test that
    plays udev)."""
    from laned.journal import JournalWriter

    stop = stop or asyncio.Event()
    notifier = notifier or Notifier.from_env()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    settings = cfg.lane_settings()
    zone = ZoneInfo(cfg.lane.timezone)
    clock = wall or lane_clock(zone)
    profile = get_profile(cfg.rsu.profile)
    fees, fees_problem = load_fees(cfg, clock())
    status_in_use = load_status(cfg)
    status = status_in_use.store if status_in_use is not None else StatusList()
    status_loaded_at = status_valid_from(cfg, status_in_use, zone)
    async with AsyncExitStack() as stack:
        # One thread owns the journal: every commit (and its fsync) happens there, never on
        # the loop that answers the RSU and samples the safety loop.
        writer = JournalWriter.open(cfg.journal.path, settings.lane_id, now=clock(), **(journal_options or {}))
        await writer.astart()
        stack.push_async_callback(writer.aclose)
        recovery = writer.recovery
        assert recovery is not None  # known once the writer has started
        if recovery.completed or recovery.unknown:
            log.warning("journal: recovered after an unclean stop: %s", recovery)
        wall0, mono0 = clock(), time.monotonic()
        recent = await writer.submit_async(lambda mj: mj.recent_paid(settings.redetect_window, wall0, mono0))
        machine = LaneMachine(settings, cfg.dialect(), fees=fees, status=status, recent=recent)

        def vehicle_busy() -> bool:  # B2 to the end of the transaction; also read on the journal's thread
            return machine.tx is not None

        writer.hold_background(vehicle_busy)
        rsu = make_rsu(cfg)
        buses = Buses()
        io = make_io(cfg, buses)
        display = make_display(cfg, buses)
        warn_shared_bus(cfg, buses)
        for bus in buses.all():
            await bus.start()
            stack.push_async_callback(bus.close)
        # centre_link_down waits uplink.link_down_alarm_s: a short outage is normal on a WAN.
        # (No keyword at all without [uplink]: tests pass their own debounces through it.)
        registry = (AlarmRegistry() if cfg.uplink is None else
                    AlarmRegistry(debounce_s={"centre_link_down": cfg.uplink.link_down_alarm_s}))
        monitor = HealthMonitor(
            registry=registry, settings=cfg.health.settings(cfg.barrier, cfg.rsu), post=lambda ev: executor.post(ev),
            rsu=rsu, io=io, display=display, writer=writer, journal_path=cfg.journal.path, fees=fees,
            status_list=status,
            status_list_loaded_at=status_loaded_at, fee_table_required=settings.direction.value == "exit",
            status_list_required=cfg.status_list is not None, rsu_ready=lambda: machine.rsu_initialised,
            wall=lambda: clock().astimezone(zone), observe=observe)
        uplink = None
        journal_port: Any = writer
        if cfg.uplink is not None:
            from laned.uplink.reporting import LaneView, RecordingChecker
            from laned.uplink.service import UplinkService
            from laned.uplink.contract import contract

            # Read and compiled here, at start (~0.25 s), not on the loop at the first connect.
            contract().warm()

            # The health snapshot to the centre carries the checks' latest results.
            monitor.checker = RecordingChecker(monitor.settings)
            uplink = UplinkService.from_config(
                cfg.uplink, settings.lane_id, writer=writer, monitor=monitor,
                lane=LaneView(etc_open=lambda: not machine.modes.closed, closed_by=lambda: machine.modes.closed_by,
                              vehicle_busy=vehicle_busy, counters=lambda: machine.counters),
                wall=lambda: clock().astimezone(zone))
            journal_port = NotifyingJournal(writer, uplink.notify, loop)
            uplink.lists = make_list_service(cfg, cfg.uplink, machine, monitor, status_in_use, fees,
                                             post=lambda ev: executor.post(ev), wall=lambda: clock().astimezone(zone))

        def vehicle_gone() -> None:  # what gave way to the vehicle goes on at once, not at its next look
            writer.vehicle_gone()
            if uplink is not None:
                uplink.vehicle_gone()

        executor = LaneExecutor(machine, rsu, io, display, journal_port, wall=clock, observe=observe,
                                on_alarm=monitor.lane_alarm, vehicle_gone=vehicle_gone)
        executor.health = monitor
        if uplink is not None and cfg.uplink is not None:
            from laned.uplink.command_exec import CommandExecutor, LaneControl

            # Signed commands from the centre, executed at most once (docs/uplink.md, Commands).
            commands = CommandExecutor.from_config(
                cfg.uplink, settings.lane_id, display_profile=cfg.devices.fee_display.profile, writer=writer,
                lane=LaneControl(post=executor.post, closed_by=lambda: machine.modes.closed_by,
                                 is_down=machine.modes.is_down, has_display=display is not None, has_io=io is not None,
                                 fetch_list=uplink.lists.fetch if uplink.lists is not None else None),
                control=uplink, wall=lambda: clock().astimezone(zone))
            await commands.restore()  # a lane the centre closed stays closed across a restart
            uplink.on_command = commands
        if fees is None:
            log.error("fee table: %s; ETC closed until a valid one is installed", fees_problem)
            executor.post(DeviceStatus(Device.FEES, False, fees_problem))
        rsu.attach(rsu_feed(executor, stop))
        await stack.enter_async_context(rsu)
        watcher = None
        if cfg.hotplug.enabled and cfg.hotplug.match is not None:
            from laned.drivers.hotplug import HotplugWatcher
            watcher = HotplugWatcher(cfg.hotplug.match, name="rsu-hotplug", source_factory=uevent_source)
            await stack.enter_async_context(watcher)
        if io is not None:
            await io.start()
            stack.push_async_callback(io.close)
        if display is not None:
            await display.start()
            stack.push_async_callback(display.close)
        await _first_rsu_attempt(rsu)
        executor.settle()
        announce(settings.lane_id, settings.direction, profile.name, rsu, io, display, fees_problem)

        def status_line() -> str:
            modes = machine.modes
            state = f"ETC closed ({modes.describe()})" if modes.closed else "in service"
            return f"lane {settings.lane_id} {state}; {monitor.status_line()}"

        def healthy() -> str | None:
            if not executor.running:
                return "the lane executor is not running"
            if not writer.alive:
                return f"the journal writer is not alive ({writer.death or 'stuck in one operation'})"
            if executor.last_handled is not None and time.monotonic() - executor.last_handled > LANE_STUCK_S:
                return f"the lane has handled no event for {time.monotonic() - executor.last_handled:.1f} s"
            return None

        watchdog = Watchdog(notifier, healthy)
        try:
            async with asyncio.TaskGroup() as tg:
                def task(name: str, work: Awaitable[None]) -> None:
                    tg.create_task(_named(name, work), name=name)

                task("lane-executor", executor.run(io.samples() if io is not None else None))
                task("rsu-link", watch("rsu", [rsu.task]))
                for bus in buses.all():
                    task(bus.name, watch(bus.name, bus.tasks))
                for driver in (io, display):
                    if driver is not None:
                        task(driver.name, watch(driver.name, getattr(driver, "tasks", [])))
                if watcher is not None:
                    task("rsu-hotplug", follow_hotplug(watcher, rsu))
                task("journal-writer", watch_writer(writer))
                task("health", monitor.run(after=lambda: notifier.status(status_line())))
                task("sd-watchdog", watchdog.run())
                if uplink is not None:
                    # Link failures are handled inside (alarm, back-off); anything else it
                    # raises is a bug and ends the daemon like any task's.
                    task("uplink", uplink.run())
                # What lives for good is built: keep the cyclic GC's full passes off it
                # (~10 ms each over every object; docs/lists.md "Not blocking the lane").
                gc.collect()
                gc.freeze()
                # READY once the lane is in service or in a degraded mode it has announced.
                notifier.ready(status_line())
                if started is not None:
                    started(executor)
                # The group's own body waits for the stop: a task that fails interrupts this
                # wait, which is how Python 3.11's TaskGroup un-cancels the caller afterwards.
                await stop.wait()
                raise _Stopping
        except* _Stopping:
            notifier.stopping(f"lane {settings.lane_id} stopping")
        except* LaneTaskFailed as group:
            first = group.exceptions[0]
            raise first from None
        log.info("lane %s stopped", settings.lane_id)
        return executor


def announce(lane_id: str, direction: Any, profile: str, rsu: RsuLink, io: LaneIO | None,
             display: FeeDisplay | None, fees_problem: str) -> None:
    """Say once, at start, whether the lane is in service or degraded and why."""
    problems = []
    if not rsu.connected:
        problems.append(f"rsu: {rsu.status.reason}")
    for driver in (io, display):
        if driver is not None:
            h = driver.health()
            if not h.online:
                problems.append(f"{h.device}: {h.detail}")
    if fees_problem:
        problems.append(f"fees: {fees_problem}")
    if problems:
        log.warning("lane %s started DEGRADED (%s lane, RSU profile %s): %s", lane_id, direction, profile,
                    "; ".join(problems))
    else:
        log.info("lane %s in service (%s lane, RSU profile %s)", lane_id, direction, profile)
