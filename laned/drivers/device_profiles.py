"""Device profiles: what a vendor's fee display or IO module keeps in which register.

Real lanes mix vendors, so register maps are data from the config, not code: the config
loader maps ``[devices.fee_display.profile]`` and ``[devices.io_module.profile]`` onto the
models below. A bad profile stops the start; every error names the key, the value and
what was expected (pydantic puts the key path and the value in front of our message).

Addresses are the 0-based numbers on the wire (the "PDU address"). A vendor manual that
says "40001" or "register 1" means wire address 0: subtract the 4xxxx/1 offset.

The codecs that turn a :class:`~laned.drivers.fee_display.DisplayContent` into register
values, and back, live here too: the driver writes with them and the emulator reads back
with them, so both sides of a HIL test speak the one layout the profile describes.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from laned.drivers.fee_display import DisplayContent
from laned.drivers.gpio_profile import REQUIRED_OUTPUTS, BarrierMode, Contact
from laned.drivers.lane_io import REQUIRED_INPUTS, Light, Output, Signal

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FEE_DISPLAY_PROFILE",
    "DEFAULT_IO_MODULE_PROFILE",
    "BarrierDrive",
    "BarrierMode",
    "BrightnessRegister",
    "ByteOrder",
    "FeeDisplayProfile",
    "InputKind",
    "InputPoint",
    "IoModuleProfile",
    "LightRegister",
    "OutputPoint",
    "PollRates",
    "Polarity",
    "RegisterBlock",
    "TextField",
    "U32Register",
    "WordOrder",
]

# Modbus limits (Modbus Application Protocol V1.1b3, 6.12 and 6.3): one write carries at
# most 123 registers, one read returns at most 125.
MAX_WRITE_REGISTERS: Final = 123
MAX_ADDRESS: Final = 0xFFFF

# The barrier interlock treats a sample older than 50 ms as stale, so the safety loop
# must be read at least 20 times a second.
MIN_SAFETY_LOOP_HZ: Final = 20.0

# NO/NC is the same idea for a Modbus input bit as for a GPIO contact.
Polarity = Contact


def _frozen() -> ConfigDict:
    return ConfigDict(frozen=True, extra="forbid")


# -- fee display ------------------------------------------------------------------------


class WordOrder(enum.StrEnum):
    """How a 32-bit value is split over two registers."""

    HIGH_FIRST = "high_first"  # register n = high 16 bits ("big-endian", ABCD)
    LOW_FIRST = "low_first"  # register n = low 16 bits ("word-swapped", CDAB)


class ByteOrder(enum.StrEnum):
    """Which text byte goes into the high half of a register."""

    HIGH_FIRST = "high_first"  # first byte in bits 15..8 (most displays)
    LOW_FIRST = "low_first"  # first byte in bits 7..0


class TextField(BaseModel):
    """GBK text in ``registers`` consecutive registers, two bytes each, padded."""

    model_config = _frozen()

    address: int = Field(ge=0, le=MAX_ADDRESS)
    registers: int = Field(ge=1, le=MAX_WRITE_REGISTERS)
    byte_order: ByteOrder = ByteOrder.HIGH_FIRST
    # What fills the field after the text: most displays want spaces, some NUL.
    pad: int = Field(default=0x20, ge=0x00, le=0x7F)

    @property
    def span(self) -> range:
        return range(self.address, self.address + self.registers)

    def encode(self, text: str, *, key: str = "text") -> tuple[int, ...]:
        """GBK bytes of ``text``, cut at a whole character if too long, padded.

        ``key`` names the field in the warnings. They never quote the text: it may be a
        plate, and plates stay out of logs.
        """
        room = 2 * self.registers
        data = bytearray()
        for shown, char in enumerate(text):
            encoded = char.encode("gbk", errors="replace")
            if encoded == b"?" and char != "?":
                log.warning("display %s: character %d has no GBK code; showing '?'", key, shown + 1)
            if len(data) + len(encoded) > room:
                log.warning(
                    "display %s: %d characters do not fit in %d registers (%d bytes); showing "
                    "the first %d — widen %s.registers in the display profile",
                    key, len(text), self.registers, room, shown, key,
                )
                break
            data += encoded
        data += bytes([self.pad]) * (room - len(data))
        first, second = (0, 1) if self.byte_order is ByteOrder.HIGH_FIRST else (1, 0)
        return tuple((data[i + first] << 8) | data[i + second] for i in range(0, room, 2))

    def decode(self, registers: Sequence[int]) -> str:
        data = bytearray()
        for value in registers:
            high, low = value >> 8, value & 0xFF
            data += bytes((high, low) if self.byte_order is ByteOrder.HIGH_FIRST else (low, high))
        return data.rstrip(bytes([self.pad, 0])).decode("gbk", errors="replace")


class RegisterBlock(BaseModel):
    """A number in one register, or in two (``u32``) for money in fen."""

    model_config = _frozen()

    address: int = Field(ge=0, le=MAX_ADDRESS)

    @property
    def span(self) -> range:
        return range(self.address, self.address + 1)


class U32Register(RegisterBlock):
    @property
    def span(self) -> range:
        return range(self.address, self.address + 2)


class LightRegister(RegisterBlock):
    """The lane light drawn on the display, as a vendor code per colour."""

    off: int = Field(default=0, ge=0, le=0xFFFF)
    red: int = Field(default=1, ge=0, le=0xFFFF)
    green: int = Field(default=2, ge=0, le=0xFFFF)

    @model_validator(mode="after")
    def _distinct(self) -> LightRegister:
        codes = {"off": self.off, "red": self.red, "green": self.green}
        if len(set(codes.values())) != 3:
            raise ValueError(f"off, red and green need three different codes, got {codes}")
        return self

    def code(self, light: Light) -> int:
        return {Light.OFF: self.off, Light.RED: self.red, Light.GREEN: self.green}[light]

    def light(self, code: int) -> Light | None:
        return {self.off: Light.OFF, self.red: Light.RED, self.green: Light.GREEN}.get(code)


class BrightnessRegister(RegisterBlock):
    """Brightness: laned's 0–100 % scaled onto the vendor's 0..``full_scale``."""

    full_scale: int = Field(default=100, ge=1, le=0xFFFF)

    def code(self, percent: int) -> int:
        return round(max(0, min(100, percent)) * self.full_scale / 100)

    def percent(self, code: int) -> int:
        return round(code * 100 / self.full_scale)


class FeeDisplayProfile(BaseModel):
    """Holding-register map of a fee display (费额显示器)."""

    model_config = _frozen()

    vendor: str = "generic"
    plate: TextField
    vehicle_class: RegisterBlock
    fee: U32Register
    balance: U32Register
    line1: TextField
    line2: TextField
    light: LightRegister | None = None  # displays without a drawn lane light
    brightness: BrightnessRegister | None = None
    u32_word_order: WordOrder = WordOrder.HIGH_FIRST
    # What the display shows as "nothing" in a money field or the class field.
    blank_u32: int = Field(default=0xFFFFFFFF, ge=0, le=0xFFFFFFFF)
    blank_class: int = Field(default=0, ge=0, le=0xFFFF)

    @model_validator(mode="after")
    def _no_overlap(self) -> FeeDisplayProfile:
        fields = self.fields()
        for i, (key, block) in enumerate(fields):
            for other_key, other in fields[i + 1:]:
                if set(block.span) & set(other.span):
                    raise ValueError(
                        f"{key} (registers {_span_text(block.span)}) overlaps "
                        f"{other_key} (registers {_span_text(other.span)}); every field needs "
                        "its own registers"
                    )
            if block.span.stop - 1 > MAX_ADDRESS:
                raise ValueError(f"{key} (registers {_span_text(block.span)}) runs past register {MAX_ADDRESS}")
        return self

    def fields(self) -> list[tuple[str, TextField | RegisterBlock]]:
        """Every mapped field, with its key in the profile."""
        named: list[tuple[str, TextField | RegisterBlock | None]] = [
            ("light", self.light),
            ("fee", self.fee),
            ("balance", self.balance),
            ("plate", self.plate),
            ("vehicle_class", self.vehicle_class),
            ("line1", self.line1),
            ("line2", self.line2),
            ("brightness", self.brightness),
        ]
        return [(key, block) for key, block in named if block is not None]

    # -- codecs ---------------------------------------------------------------------

    def encode_u32(self, value: int | None) -> tuple[int, int]:
        raw = self.blank_u32 if value is None else value
        if not 0 <= raw <= 0xFFFFFFFF:
            raise ValueError(f"{raw} fen does not fit in 32 bits")
        high, low = raw >> 16, raw & 0xFFFF
        return (high, low) if self.u32_word_order is WordOrder.HIGH_FIRST else (low, high)

    def decode_u32(self, registers: Sequence[int]) -> int | None:
        first, second = registers[0], registers[1]
        raw = (first << 16) | second if self.u32_word_order is WordOrder.HIGH_FIRST else (second << 16) | first
        return None if raw == self.blank_u32 else raw

    def encode(self, content: DisplayContent) -> list[tuple[str, int, tuple[int, ...]]]:
        """``(field, first register, values)`` for every field ``content`` sets.

        Brightness ``None`` means "keep the current setting", so it is left out.
        """
        values: dict[str, tuple[int, ...]] = {
            "plate": self.plate.encode(content.plate or "", key="plate"),
            "vehicle_class": (self.blank_class if content.vehicle_class is None else content.vehicle_class,),
            "fee": self.encode_u32(content.fee_fen),
            "balance": self.encode_u32(content.balance_fen),
            "line1": self.line1.encode(content.line1, key="line1"),
            "line2": self.line2.encode(content.line2, key="line2"),
        }
        if self.light is not None:
            values["light"] = (self.light.code(content.light),)
        if self.brightness is not None and content.brightness is not None:
            values["brightness"] = (self.brightness.code(content.brightness),)
        return [(key, block.address, values[key]) for key, block in self.fields() if key in values]

    def decode(self, read: Callable[[int, int], Sequence[int]]) -> DisplayContent:
        """What the registers say, as the content that would have produced them.

        ``read(address, count)`` returns holding registers. An unknown light code reads as
        ``Light.OFF`` only if it is the off code; anything else unknown reads as red,
        the colour that stops traffic.
        """
        plate = self.plate.decode(read(self.plate.address, self.plate.registers))
        vehicle_class = read(self.vehicle_class.address, 1)[0]
        light = Light.RED
        if self.light is not None:
            light = self.light.light(read(self.light.address, 1)[0]) or Light.RED
        brightness = None
        if self.brightness is not None:
            brightness = self.brightness.percent(read(self.brightness.address, 1)[0])
        return DisplayContent(
            plate=plate or None,
            vehicle_class=None if vehicle_class == self.blank_class else vehicle_class,
            fee_fen=self.decode_u32(read(self.fee.address, 2)),
            balance_fen=self.decode_u32(read(self.balance.address, 2)),
            line1=self.line1.decode(read(self.line1.address, self.line1.registers)),
            line2=self.line2.decode(read(self.line2.address, self.line2.registers)),
            light=light,
            brightness=brightness,
        )

    @property
    def register_count(self) -> int:
        """Registers a device needs from address 0 to hold every field."""
        return max(block.span.stop for _, block in self.fields())


def _span_text(span: range) -> str:
    return str(span.start) if len(span) == 1 else f"{span.start}–{span.stop - 1}"


# -- IO module --------------------------------------------------------------------------


class InputKind(enum.StrEnum):
    """Where an IO module reports an input."""

    DISCRETE_INPUT = "discrete_input"  # function code 2, one bit per input
    INPUT_REGISTER_BIT = "input_register_bit"  # function code 4, one bit of a register
    HOLDING_REGISTER_BIT = "holding_register_bit"  # function code 3, one bit of a register


class InputPoint(BaseModel):
    """One lane input on the module. ``bit`` is 0 (LSB) … 15, for register kinds only."""

    model_config = _frozen()

    kind: InputKind = InputKind.DISCRETE_INPUT
    address: int = Field(ge=0, le=MAX_ADDRESS)
    bit: int | None = Field(default=None, ge=0, le=15)
    polarity: Polarity = Polarity.NO

    @model_validator(mode="after")
    def _bit_matches_kind(self) -> InputPoint:
        if self.kind is InputKind.DISCRETE_INPUT and self.bit is not None:
            raise ValueError(
                f"bit = {self.bit} is only for register inputs; a discrete input is "
                "addressed by its address alone (drop bit, or set kind to "
                "'input_register_bit' or 'holding_register_bit')"
            )
        if self.kind is not InputKind.DISCRETE_INPUT and self.bit is None:
            raise ValueError(f"kind = '{self.kind}' needs bit = 0…15 (which bit of register {self.address})")
        return self

    @property
    def location(self) -> str:
        """Where to look, in a field engineer's words."""
        if self.kind is InputKind.DISCRETE_INPUT:
            return f"discrete input {self.address}"
        register = "input register" if self.kind is InputKind.INPUT_REGISTER_BIT else "holding register"
        return f"{register} {self.address} bit {self.bit}"

    def active_from_bit(self, bit: bool) -> bool:
        """NO: the bit is set while the condition is present; NC: it is clear."""
        return bit if self.polarity is Polarity.NO else not bit

    def bit_for(self, active: bool) -> bool:
        return self.active_from_bit(active)  # NO/NC is its own inverse


class OutputPoint(BaseModel):
    """One lane output on a coil. NC: the output is active while the coil is *off*."""

    model_config = _frozen()

    coil: int = Field(ge=0, le=MAX_ADDRESS)
    polarity: Polarity = Polarity.NO

    def coil_for(self, active: bool) -> bool:
        return active if self.polarity is Polarity.NO else not active

    def active_from_coil(self, coil: bool) -> bool:
        return self.coil_for(coil)


class BarrierDrive(BaseModel):
    model_config = _frozen()

    mode: BarrierMode = BarrierMode.LEVEL
    # Typical barrier controllers want 200–500 ms on their raise/lower terminals.
    pulse_ms: int = Field(default=500, ge=20, le=5000)


class PollRates(BaseModel):
    model_config = _frozen()

    safety_loop_hz: float = MIN_SAFETY_LOOP_HZ
    other_inputs_hz: float = Field(default=10.0, gt=0.0, le=200.0)

    @field_validator("safety_loop_hz")
    @classmethod
    def _fast_enough(cls, value: float) -> float:
        if not MIN_SAFETY_LOOP_HZ <= value <= 200.0:
            raise ValueError(
                f"safety_loop_hz = {value:g} is outside {MIN_SAFETY_LOOP_HZ:g}–200: the barrier "
                f"interlock needs a safety-loop sample younger than {1000 / MIN_SAFETY_LOOP_HZ:g} ms, "
                f"so poll it at {MIN_SAFETY_LOOP_HZ:g} Hz or more"
            )
        return value


class IoModuleProfile(BaseModel):
    """Coil and input map of a Modbus DI/DO module wired to the lane."""

    model_config = _frozen()

    vendor: str = "generic"
    inputs: dict[Signal, InputPoint]
    outputs: dict[Output, OutputPoint]
    barrier: BarrierDrive = BarrierDrive()
    poll: PollRates = PollRates()

    @model_validator(mode="after")
    def _complete_and_distinct(self) -> IoModuleProfile:
        required: list[tuple[str, Sequence[enum.StrEnum], dict[Any, Any], str]] = [
            ("inputs", REQUIRED_INPUTS, self.inputs, "every lane needs the safety loop and both limit switches"),
            ("outputs", REQUIRED_OUTPUTS, self.outputs, "the barrier needs both"),
        ]
        for key, names, table, why in required:
            if missing := [name.value for name in names if name not in table]:
                raise ValueError(f"{key}: no entry for {', '.join(missing)} ({why})")
        seen: dict[tuple[InputKind, int, int | None], Signal] = {}
        for signal, point in self.inputs.items():
            where = (point.kind, point.address, point.bit)
            if where in seen:
                raise ValueError(
                    f"inputs.{signal.value} and inputs.{seen[where].value} both read {point.location}"
                )
            seen[where] = signal
        coils: dict[int, Output] = {}
        for output, out in self.outputs.items():
            if out.coil in coils:
                raise ValueError(
                    f"outputs.{output.value} and outputs.{coils[out.coil].value} both drive coil {out.coil}"
                )
            coils[out.coil] = output
        return self


# -- defaults ---------------------------------------------------------------------------

# The reference fee display of the laned bench (docs/devices.md, "Default fee display"):
# 6-register plate (a new-energy plate, 鲁AD12345, is 9 GBK bytes), two 16-character lines.
DEFAULT_FEE_DISPLAY_PROFILE: Final = FeeDisplayProfile(
    vendor="laned reference display",
    plate=TextField(address=0, registers=6),
    vehicle_class=RegisterBlock(address=6),
    fee=U32Register(address=7),
    balance=U32Register(address=9),
    light=LightRegister(address=11),
    brightness=BrightnessRegister(address=12),
    line1=TextField(address=16, registers=16),
    line2=TextField(address=32, registers=16),
)

# A generic 8-in/8-out module (docs/devices.md, "Default IO module"). The safety loop is
# wired NC: a cut detector cable then reads "occupied", never "clear".
DEFAULT_IO_MODULE_PROFILE: Final = IoModuleProfile(
    vendor="generic 8DI/8DO",
    inputs={
        Signal.ENTRY_LOOP: InputPoint(address=0),
        Signal.SAFETY_LOOP: InputPoint(address=1, polarity=Polarity.NC),
        Signal.BARRIER_UP: InputPoint(address=2),
        Signal.BARRIER_DOWN: InputPoint(address=3),
    },
    outputs={
        Output.BARRIER_RAISE: OutputPoint(coil=0),
        Output.BARRIER_LOWER: OutputPoint(coil=1),
        Output.LIGHT_GREEN: OutputPoint(coil=2),
        Output.LIGHT_RED: OutputPoint(coil=3),
        Output.ALARM: OutputPoint(coil=4),
    },
)
