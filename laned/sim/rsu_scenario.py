"""What the emulated RSU will find in its zone: OBUs, their cards, and what goes wrong.

An :class:`ObuScenario` describes one OBU and its card completely — the B2 contract,
the B3 vehicle file, the B4 card files 0015 and 0019, the balance — plus the faults the
emulator injects while serving it: ErrorCodes in B2–B5 (RSU_PROTOCOL.md, "B5 ErrorCode"),
transport faults on its frames (corrupted, dropped, split …), a lost B5, the answer to a
TAC re-fetch (C8).

The byte layouts of the card files follow :mod:`laned.protocol.records` (0015:
:class:`~laned.protocol.records.CardIssueFile` field order; 0019: 3 header bytes and the
40-byte station record), and the OBUStatus bytes are built from named flags through the
profile's ``obu_status_bits``, so the emulator and the lane read the same data.

Scenarios load from JSON (a list of objects with the field names below; dates ISO,
byte strings hex, error codes as hex strings such as ``"17"`` or as integers, flags
and faults by name); :func:`ObuScenario.from_sim_vehicle` builds one from the simulated
lane's :class:`~laned.sim.vehicle.SimVehicle`; :func:`load_obu_scenarios` names the OBU
index, the key and the problem when a file is wrong.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laned.protocol.profiles.base import DEFAULT_OBU_STATUS_BITS, ObuFlag
from laned.protocol.records import CardIssueFile, CardType, StationRecord


class Fault(enum.StrEnum):
    """Transport faults the emulator can put on a frame it sends."""

    CORRUPT = "corrupt"  # one DATA byte flipped: the check byte (BCC/CRC) no longer matches
    DROP = "drop"  # never sent
    DUPLICATE = "duplicate"  # sent twice back to back
    DELAY = "delay"  # sent after a pause
    SPLIT = "split"  # written in pieces with gaps between them
    NOISE = "noise"  # line-noise bytes written before the frame


# 0019 header of a written station record: application type, record length, lock flag
# (RSU_PROTOCOL.md, "Records inside the frames"; values as seen in lane test data).
STATION_HEADER = bytes((0xAA, 0x29, 0x00))
STATION_RECORD_SIZE = 40


@dataclass(frozen=True, slots=True)
class EntryRecord:
    """The 40-byte station record of card file 0019 (entry station, lane, time …)."""

    network: str = "3701"  # BCD, 4 digits
    station: str = "0102"  # 2 bytes, hex
    lane: int = 3
    entry_time: int = 1_732_260_000  # unix seconds
    vehicle_class: int = 1
    in_out: int = 2
    tail: bytes = bytes(29)  # staff and device ids, plate: province-specific

    def record(self) -> bytes:
        rec = (bytes.fromhex(self.network) + bytes.fromhex(self.station) + bytes((self.lane,))
               + self.entry_time.to_bytes(4, "big") + bytes((self.vehicle_class, self.in_out)) + self.tail)
        if len(rec) != STATION_RECORD_SIZE:
            raise ValueError(f"station record is {len(rec)} bytes, expected {STATION_RECORD_SIZE} "
                             f"(network 2, station 2, lane 1, time 4, class 1, in/out 1, tail 29)")
        return rec

    def file_0019(self) -> bytes:
        return STATION_HEADER + self.record()


def file_0019(record: bytes | None) -> bytes:
    """43 bytes of card file 0019 around a 40-byte station record (None: never written)."""
    if record is None:
        return bytes(StationRecord.SIZE)
    return STATION_HEADER + record


def obu_status_bytes(flags: frozenset[ObuFlag] | set[ObuFlag],
                     bits: Mapping[ObuFlag, tuple[int, int]] = DEFAULT_OBU_STATUS_BITS) -> bytes:
    """The 2-byte OBUStatus with ``flags`` set at the profile's bit positions."""
    raw = bytearray(2)
    for flag in flags:
        byte, bit = bits[flag]
        raw[byte] |= 1 << bit
    return bytes(raw)


def _bcd_date(value: dt.date | None) -> bytes:
    return bytes(4) if value is None else bytes.fromhex(value.strftime("%Y%m%d"))


@dataclass(frozen=True)
class ObuScenario:
    """One OBU with its card, as the RSU will read it.

    ``arrive_at`` is seconds after the emulator started; the OBU stays in the zone for
    ``dwell`` seconds (``None``: until its transaction is over — charged, stopped or
    abandoned; ``math.inf``: until :meth:`~laned.sim.rsu_emulator.RsuEmulator.remove_obu`
    takes it out, as the simulated lane does when its vehicle passes the arm). While it is
    in the zone and not in a transaction, the RSU reports it again once the re-detection
    interval has passed since its last transaction — for ``reread_for`` seconds after its
    first transaction ended (``None``: as long as it is in the zone; 0: never, an RSU set to
    suppress re-reads), and with ``redetect`` at least once whatever ``reread_for`` says.
    """

    obu_id: str  # 8 hex digits
    arrive_at: float = 0.0
    dwell: float | None = None
    reread_for: float | None = None
    flags: frozenset[ObuFlag] = frozenset()
    contract_issue: dt.date = dt.date(2023, 1, 1)
    contract_expiry: dt.date = dt.date(2033, 1, 1)
    issuer: bytes = bytes.fromhex("c9bdb6ab37010001")  # 8 bytes: province name + issuer code
    contract_serial: bytes | None = None  # 8 bytes; None: derived from the OBU id
    equipment_cv: int = 0x21
    plate: str = "鲁A12345"
    plate_colour: int = 0
    vehicle_class: int = 1
    vehicle_user_type: int = 0
    card_type: CardType = CardType.STORED_VALUE
    card_version: int = 0x40
    card_network: str = "3701"  # 4 BCD digits
    card_number: str = "2301000012345678"  # 16 BCD digits
    card_start: dt.date | None = None  # None: the contract dates
    card_expiry: dt.date | None = None
    card_plate: str | None = None  # 0015's plate and class; None: the OBU's (plate, vehicle_class)
    card_class: int | None = None
    balance: int = 100_00  # fen
    # A credit card's balance field goes down by the charge too, never below 0 (it is an
    # unsigned field on the wire: a credit card with balance 0 is still charged).
    debit_credit_card: bool = True
    entry: EntryRecord | None = EntryRecord()
    # Injected ErrorCodes by frame name ("B2", "B3", "B4", "B5"): the RSU sends the short
    # error form of that frame instead of the data (RSU_PROTOCOL.md, "B5 ErrorCode").
    errors: Mapping[str, int] = field(default_factory=dict)
    # Transport faults by frame name, applied to every frame of that type for this OBU.
    faults: Mapping[str, tuple[Fault, ...]] = field(default_factory=dict)
    lost_b5: bool = False  # the purchase happens but its B5 never reaches the lane
    refetch_error: int | None = None  # C8 answered with this B5 ErrorCode (0x35, 0x36) instead
    # After its transaction ends (charged, stopped by C2, abandoned) the OBU stays in the
    # zone and is reported once more after the emulator's re-detection interval: the
    # "OBU seen again after paying" case. (A ``dwell`` gives the general form.)
    redetect: bool = False
    # Shorthands for ``errors``: the ErrorCode to put into that frame (0/None: none).
    b2_error: int | None = None
    b3_error: int | None = None
    b4_error: int | None = None
    b5_error: int | None = None

    def __post_init__(self) -> None:
        oid = self.obu_id.lower()
        if len(oid) != 8 or any(c not in "0123456789abcdef" for c in oid):
            raise ValueError(f"obu_id must be 8 hex digits, got {self.obu_id!r}")
        object.__setattr__(self, "obu_id", oid)
        if len(self.issuer) != 8:
            raise ValueError(f"issuer must be 8 bytes, got {len(self.issuer)}")
        if not (len(self.card_network) == 4 and self.card_network.isdigit()):
            raise ValueError(f"card_network must be 4 digits, got {self.card_network!r}")
        if not (len(self.card_number) == 16 and self.card_number.isdigit()):
            raise ValueError(f"card_number must be 16 digits, got {self.card_number!r}")
        if self.balance < 0:
            raise ValueError("balance must be >= 0 fen")
        if self.reread_for is not None and not self.reread_for >= 0:
            raise ValueError(f"reread_for must be >= 0 s or None, got {self.reread_for!r}")
        errors = {str(k).upper(): int(v) for k, v in self.errors.items()}
        for name, code in (("B2", self.b2_error), ("B3", self.b3_error), ("B4", self.b4_error),
                           ("B5", self.b5_error)):
            if code:
                errors[name] = int(code)
        object.__setattr__(self, "errors", errors)
        object.__setattr__(self, "faults", {str(k).upper(): tuple(Fault(f) for f in v)
                                            for k, v in self.faults.items()})
        for name in list(self.errors) + list(self.faults):
            if name not in ("B2", "B3", "B4", "B5"):
                raise ValueError(f"errors/faults are keyed by B2, B3, B4 or B5, got {name!r}")
        object.__setattr__(self, "flags", frozenset(ObuFlag(f) for f in self.flags))
        object.__setattr__(self, "card_type", CardType(self.card_type))

    @classmethod
    def from_sim_vehicle(cls, v: Any, *, arrive_at: float | None = None, **overrides: Any) -> ObuScenario:
        """The OBU and card of a :class:`laned.sim.vehicle.SimVehicle`.

        ``arrive_at`` defaults to the vehicle's ``arrive_after`` (a scenario's arrivals are
        cumulative: see :func:`scenarios_from_sim`). Kind ``seen_again`` sets ``redetect``;
        ``rsu_faults`` map onto the first sending of one frame each — corrupt → B3,
        duplicate → B2, split → B4, noise → B4 — and ``lost_b5`` onto ``lost_b5``, so a
        lane that asks again (C2 stop type 2) or re-fetches the TAC can still finish;
        ``rsu_errors`` onto ``errors``. The card's plate, class and validity default to the OBU's; the entry record's
        network to the card's (``entry_network`` overrides it), its time to an hour ago.
        """
        faults: dict[str, list[Fault]] = {}
        where = {"corrupt": "B3", "duplicate": "B2", "split": "B4", "noise": "B4"}
        for f in v.rsu_faults:
            if f in where:
                faults.setdefault(where[f], []).append(Fault(f))
        kind = getattr(v.kind, "value", v.kind)
        entry: EntryRecord | None = None
        if v.entry_station is not None:
            # Entry network: the card's unless the vehicle says otherwise (a Jiangsu card
            # entering at a Shandong station); time: an hour ago unless it says when.
            entered = getattr(v, "entry_time", None)
            entry = EntryRecord(network=getattr(v, "entry_network", None) or v.card_number[:4],
                                station=v.entry_station, vehicle_class=v.vehicle_class,
                                entry_time=int(entered.timestamp()) if entered is not None else int(time.time()) - 3600)
        kw: dict[str, Any] = dict(
            obu_id=v.obu_id,
            arrive_at=float(v.arrive_after if arrive_at is None else arrive_at),
            flags=frozenset(ObuFlag(f) for f in v.obu_flags),
            contract_issue=getattr(v, "contract_start", ObuScenario.contract_issue),
            contract_expiry=v.contract_expiry,
            card_start=getattr(v, "card_start", None),
            card_expiry=getattr(v, "card_expiry", None),
            plate=v.plate,
            vehicle_class=v.vehicle_class,
            card_plate=getattr(v, "card_plate", None),
            card_class=getattr(v, "card_class", None),
            card_type=_CARD_TYPES[v.card_type],
            card_network=v.card_number[:4],
            card_number=v.card_number[4:],
            balance=v.balance,
            entry=entry,
            faults={k: tuple(fs) for k, fs in faults.items()},
            errors=dict(getattr(v, "rsu_errors", None) or {}),
            lost_b5="lost_b5" in v.rsu_faults,
            redetect=kind == "seen_again",
        )
        if kw["flags"] and ObuFlag.CARD_ABSENT in kw["flags"] and "B4" not in kw["errors"]:
            kw["b4_error"] = 0x08  # no card: the card read gets no answer
        kw.update(overrides)
        return cls(**kw)

    @property
    def obu_bytes(self) -> bytes:
        return bytes.fromhex(self.obu_id)

    @property
    def serial(self) -> bytes:
        return self.contract_serial if self.contract_serial is not None else self.obu_bytes * 2

    @property
    def card_key(self) -> str:
        return self.card_network + self.card_number

    def obu_status(self, bits: Mapping[ObuFlag, tuple[int, int]] = DEFAULT_OBU_STATUS_BITS) -> bytes:
        return obu_status_bytes(self.flags, bits)

    def file_0015(self) -> bytes:
        """Card issue file 0015, in :class:`CardIssueFile` field order."""
        card_plate = self.plate if self.card_plate is None else self.card_plate
        plate = card_plate.encode("gbk")
        if len(plate) > 12:
            raise ValueError(f"plate {card_plate!r} is {len(plate)} bytes in GBK, 0015 holds 12")
        card_class = self.vehicle_class if self.card_class is None else self.card_class
        raw = (self.issuer + bytes((self.card_type, self.card_version)) + bytes.fromhex(self.card_network)
               + bytes.fromhex(self.card_number) + _bcd_date(self.card_start or self.contract_issue)
               + _bcd_date(self.card_expiry or self.contract_expiry) + plate.ljust(12, b"\x00")
               + bytes((self.vehicle_user_type, self.plate_colour, card_class)))
        assert len(raw) == CardIssueFile.SIZE
        return raw

    def vehicle_file(self) -> bytes:
        """The decrypted OBU vehicle file, 79 bytes: plate 12, colour 2, class 1, user type 1, rest 0."""
        head = (self.plate.encode("gbk").ljust(12, b"\x00") + self.plate_colour.to_bytes(2, "big")
                + bytes((self.vehicle_class, self.vehicle_user_type)))
        return head.ljust(79, b"\x00")


# -- JSON -------------------------------------------------------------------------------------

class ScenarioFileError(ValueError):
    """A scenario file that cannot be used: names the OBU index, the key and why."""


_DATE_FIELDS = {"contract_issue", "contract_expiry", "card_start", "card_expiry"}
_BYTES_FIELDS = {"issuer", "contract_serial"}
_CARD_TYPES = {"stored_value": CardType.STORED_VALUE, "credit": CardType.CREDIT}


def _entry_from_json(value: Any) -> EntryRecord | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("expected an object {network, station, lane, entry_time, vehicle_class, in_out}")
    data = dict(value)
    if "tail" in data:
        data["tail"] = bytes.fromhex(data["tail"])
    entry = EntryRecord(**data)
    entry.record()  # validates the sizes
    return entry


def _code(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def obu_from_json(item: Mapping[str, Any]) -> ObuScenario:
    """One scenario object → :class:`ObuScenario` (raises ValueError/KeyError/TypeError)."""
    known = {f.name for f in dataclasses.fields(ObuScenario)}
    kw: dict[str, Any] = {}
    for key, value in item.items():
        if key not in known:
            raise KeyError(key)
        if key in _DATE_FIELDS:
            kw[key] = None if value is None else dt.date.fromisoformat(value)
        elif key in _BYTES_FIELDS:
            kw[key] = None if value is None else bytes.fromhex(value)
        elif key == "flags":
            kw[key] = frozenset(ObuFlag(f) for f in value)
        elif key == "card_type":
            kw[key] = _CARD_TYPES[value] if isinstance(value, str) else CardType(value)
        elif key == "entry":
            kw[key] = _entry_from_json(value)
        elif key == "errors":
            kw[key] = {str(k).upper(): _code(v) for k, v in value.items()}
        elif key == "faults":
            kw[key] = {str(k).upper(): tuple(Fault(f) for f in v) for k, v in value.items()}
        elif key in ("refetch_error", "b2_error", "b3_error", "b4_error", "b5_error"):
            kw[key] = None if value is None else _code(value)
        else:
            kw[key] = value
    return ObuScenario(**kw)


def parse_obu_scenarios(data: Any, *, source: str = "scenario") -> list[ObuScenario]:
    if not isinstance(data, list):
        raise ScenarioFileError(f"{source}: expected a JSON list of OBUs, got {type(data).__name__}")
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ScenarioFileError(f"{source}: OBU {i}: expected an object, got {type(item).__name__}")
        try:
            out.append(obu_from_json(item))
        except KeyError as err:
            raise ScenarioFileError(f"{source}: OBU {i}: unknown key or value {err.args[0]!r}") from None
        except (ValueError, TypeError) as err:
            raise ScenarioFileError(f"{source}: OBU {i} ({item.get('obu_id', '?')}): {err}") from None
    return out


def read_json_file(path: str | Path, error: type[ValueError]) -> Any:
    """A scenario file's JSON; ``error`` names the file and what is wrong with it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise error(f"cannot read scenario {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise error(f"scenario {path} is not JSON: line {err.lineno} column {err.colno}: {err.msg}") from None


def load_obu_scenarios(path: str | Path) -> list[ObuScenario]:
    return parse_obu_scenarios(read_json_file(path, ScenarioFileError), source=str(path))


def scenarios_from_sim(vehicles: Any, start: float = 0.0) -> list[ObuScenario]:
    """SimVehicles → ObuScenarios with cumulative arrival times (``arrive_after`` is
    relative to the previous vehicle). A follow-car or a vehicle without an OBU (no OBU
    transaction of its own) is left out: the RSU has nothing to report for it."""
    out: list[ObuScenario] = []
    t = start
    for v in vehicles:
        t += v.arrive_after
        if getattr(v.kind, "value", v.kind) in ("follow_car", "no_obu"):
            continue
        out.append(ObuScenario.from_sim_vehicle(v, arrive_at=t))
    return out


def demo_scenario() -> list[ObuScenario]:
    """The command line's built-in traffic: a normal car, a truck, a card without money,
    an OBU taken off the windscreen, a credit card, and a car whose OBU is read twice."""
    return [
        ObuScenario("a1b2c3d4", arrive_at=2.0, plate="鲁A12345", balance=200_00),
        ObuScenario("a1b2c3d5", arrive_at=6.0, plate="鲁B88888", vehicle_class=12, plate_colour=1,
                    card_number="2301000012340002", balance=500_00),
        ObuScenario("a1b2c3d6", arrive_at=10.0, plate="苏E54321", card_network="3201",
                    card_number="2201000000000003", balance=5),
        ObuScenario("a1b2c3d7", arrive_at=14.0, plate="京N0A123", flags=frozenset({ObuFlag.OBU_REMOVED}),
                    card_number="2301000012340004"),
        ObuScenario("a1b2c3d8", arrive_at=18.0, plate="鲁C00C01", card_type=CardType.CREDIT,
                    card_number="2301000012340005", balance=0, debit_credit_card=False),
        ObuScenario("a1b2c3d9", arrive_at=22.0, dwell=15.0, plate="鲁A77777", card_number="2301000012340006",
                    balance=80_00),
    ]
