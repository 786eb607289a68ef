"""ModbusFeeDisplay: the fee display (费额显示器) as a slave on a shared Modbus bus.

Display writes are the lowest priority on the bus: a barrier command or a safety-loop
poll never waits behind a plate. To keep the bus free, ``show()`` writes only the fields
whose registers differ from what the display last confirmed, and writes neighbouring
changed fields in one request.

What the display holds is known only from successful writes. Any failed write, and any
reconnect of the bus (the display may have restarted), forgets all of it, so the next
write is a full rewrite. A background task does that rewrite without waiting for the
lane to show something new: after a reconnect at once, after a failure every
``retry_interval`` seconds (which is also what lets the bus probe a display whose
breaker is open).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Final

from laned.drivers.device_profiles import DEFAULT_FEE_DISPLAY_PROFILE, MAX_WRITE_REGISTERS, FeeDisplayProfile
from laned.drivers.tasks import cancel_and_wait
from laned.drivers.errors import DeviceError
from laned.drivers.fee_display import DisplayContent
from laned.drivers.lane_io import DeviceHealth
from laned.drivers.modbus_bus import ModbusBus, Priority, ReadHoldingRegisters, WriteRegister, WriteRegisters

log = logging.getLogger(__name__)

RETRY_INTERVAL_S: Final = 5.0


class ModbusFeeDisplay:
    """The :class:`~laned.drivers.fee_display.FeeDisplay` at ``slave`` on ``bus``."""

    def __init__(
        self,
        bus: ModbusBus,
        slave: int,
        profile: FeeDisplayProfile = DEFAULT_FEE_DISPLAY_PROFILE,
        *,
        name: str = "fee_display",
        retry_interval: float = RETRY_INTERVAL_S,
    ) -> None:
        self.name = name
        self._bus = bus
        self._slave = slave
        self._profile = profile
        self._retry_interval = retry_interval
        # field -> (first register, values) the display confirmed, valid for one bus
        # connection (``_cache_generation``).
        self._cache: dict[str, tuple[int, tuple[int, ...]]] = {}
        self._cache_generation = -1
        self._wanted: DisplayContent | None = None
        self._brightness: int | None = None  # the last brightness asked for
        self._behind = False  # the display does not show ``_wanted`` (a write failed)
        self._lock = asyncio.Lock()
        self._errors = 0
        self._last_error = ""
        self._last_ok_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._catch_up(), name=f"{self.name}-rewrite")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        return [self._task] if self._task is not None else []

    async def __aenter__(self) -> ModbusFeeDisplay:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def show(self, content: DisplayContent) -> None:
        """Write what changed since the last successful write; raises ``DeviceError``."""
        async with self._lock:
            self._wanted = content
            await self._write(content)

    def health(self) -> DeviceHealth:
        bus = self._bus.health(self._slave)
        online = bus.online and not self._behind
        if online:
            detail = "ok"
        elif not bus.link_up:
            detail = f"bus {bus.bus} is down"
        else:
            detail = f"not showing the current content: {self._last_error or bus.last_error}"
        return DeviceHealth(self.name, online, detail, self._errors, self._last_ok_at)

    # -- writing ----------------------------------------------------------------------

    async def _write(self, content: DisplayContent) -> None:
        if self._cache_generation != self._bus.generation:
            self._cache.clear()  # a new connection: the display may have restarted
            self._cache_generation = self._bus.generation
        # "None keeps the current setting" means the setting laned made last: a display
        # that restarted gets it back with the full rewrite.
        if content.brightness is None:
            content = dataclasses.replace(content, brightness=self._brightness)
        else:
            self._brightness = content.brightness
        changed = [
            (key, address, values)
            for key, address, values in self._profile.encode(content)
            if self._cache.get(key) != (address, values)
        ]
        for batch in _adjacent_batches(changed):
            address = batch[0][1]
            values = tuple(v for _, _, field_values in batch for v in field_values)
            op = WriteRegister(address, values[0]) if len(values) == 1 else WriteRegisters(address, values)
            try:
                await self._bus.request(self._slave, op, priority=Priority.DISPLAY, device=self.name)
            except DeviceError as exc:
                self._cache.clear()
                self._behind = True
                self._errors += 1
                self._last_error = str(exc)
                fields = ", ".join(key for key, _, _ in batch)
                log.warning(
                    "%s: writing %s failed: %s; the display may show stale or mixed content "
                    "— laned rewrites all of it once the display answers",
                    self.name, fields, exc,
                )
                raise
            for key, field_address, field_values in batch:
                self._cache[key] = (field_address, field_values)
        if self._behind:
            log.info("%s: display content rewritten after the failure", self.name)
        self._behind = False
        self._last_ok_at = time.monotonic()

    async def _catch_up(self) -> None:
        """Rewrite the wanted content after a reconnect (at once), or while the display
        is behind (every ``retry_interval``)."""
        while True:
            generation = self._bus.generation
            try:
                async with asyncio.timeout(self._retry_interval):
                    await self._bus.wait_generation(generation)
            except TimeoutError:
                pass
            async with self._lock:
                if self._wanted is None:
                    continue
                if not self._behind and self._cache_generation == self._bus.generation:
                    await self._keep_alive()
                    continue
                try:
                    await self._write(self._wanted)
                except DeviceError:
                    pass  # logged and counted in _write; tried again after retry_interval

    async def _keep_alive(self) -> None:
        """An idle display is asked for one register now and then, so one that died
        between vehicles is known before the next vehicle's screen depends on it."""
        if self._last_ok_at is not None and time.monotonic() - self._last_ok_at < self._retry_interval:
            return
        address = next((addr for addr, _ in self._cache.values()), None)
        if address is None:
            return
        try:
            await self._bus.request(self._slave, ReadHoldingRegisters(address, 1), priority=Priority.DISPLAY,
                                    device=self.name)
        except DeviceError as exc:
            self._cache.clear()
            self._behind = True  # rewritten in full once it answers (the next round of _catch_up)
            self._errors += 1
            self._last_error = str(exc)
            log.warning("%s: does not answer while idle (%s); its content is rewritten once it does", self.name, exc)
            return
        self._last_ok_at = time.monotonic()


def _adjacent_batches(
    changed: list[tuple[str, int, tuple[int, ...]]],
) -> list[list[tuple[str, int, tuple[int, ...]]]]:
    """Group fields whose registers follow each other into one write each."""
    batches: list[list[tuple[str, int, tuple[int, ...]]]] = []
    end = -1
    size = 0
    for item in sorted(changed, key=lambda field: field[1]):
        _, address, values = item
        if batches and address == end and size + len(values) <= MAX_WRITE_REGISTERS:
            batches[-1].append(item)
            size += len(values)
        else:
            batches.append([item])
            size = len(values)
        end = address + len(values)
    return batches
