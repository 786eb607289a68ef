"""Typed RSU messages and the machinery that lays them out on the wire.

A message type is a frozen dataclass whose fields are declared with :func:`wire` and a
field :mod:`kind <laned.protocol.fields>`; the :func:`message` decorator turns the field
list into a *layout*: construct structs, compiled once, for the complete frame and for
the short forms the protocol allows. The profiles (``laned/protocol/profiles/``) declare
their messages this way, so adding a vendor variant is one file of declarations.

Short forms (RSU_PROTOCOL.md): an RSU frame whose ErrorCode (its *status field*) is not
00 may end right after it — the heartbeat B2 is ``B2 00000000 80``. Fields that are
absent are ``None`` and are not sent when the message is encoded.

Decoding checks every length before it reads a field, and raises nothing but
:class:`ProtocolError` (``layout`` when the bytes do not fit the layout, ``field`` when a
field's bytes mean nothing). construct's *compiled* parser is not used for decoding: it
reads ``Bytes(n)`` as a bare ``io.read(n)`` that returns fewer bytes without complaint
(a 2-byte OBU id, an EF04Info shorter than EF04Length) and integers as
``struct.unpack(io.read(n))``, which raises ``struct.error`` on a short frame.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar, TypeVar, dataclass_transform

import construct as cs

from laned.protocol.errors import EncodeError, FieldError, LayoutError, ProtocolError
from laned.protocol.fields import Kind, Rest, to_jsonable


class Sender(enum.StrEnum):
    RSU = "rsu"
    PC = "pc"


def wire(kind: Kind, *, default: Any = MISSING) -> Any:
    """Declare a dataclass field that is on the wire, with its kind.

    A field specifier of :func:`message` (``dataclass_transform``): the default is a
    keyword, as PEP 681 asks, so the type checker knows which fields may be left out.
    """
    return field(default=default, metadata={"kind": kind})


class Message:
    """Base of every message. Subclasses are built by :func:`message`."""

    __slots__ = ()
    TYPE: ClassVar[int]
    SENDER: ClassVar[Sender]
    LAYOUT: ClassVar[Layout]
    PROFILE: ClassVar[str] = ""
    # Every subclass is a dataclass (made by @message, or by @dataclass); declared so that
    # dataclasses.fields() accepts type[Message] (typeshed's DataclassInstance protocol).
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    @property
    def frame_type(self) -> int:
        return self.TYPE

    @property
    def type_name(self) -> str:
        return f"{self.frame_type:02X}"

    @property
    def sender(self) -> Sender:
        return self.SENDER

    def fields(self) -> dict[str, Any]:
        """The wire fields present in this message, in wire order."""
        return {name: getattr(self, name) for name in self.LAYOUT.form_of(self)[0]}

    def json_fields(self) -> dict[str, Any]:
        return {k: to_jsonable(v) for k, v in self.fields().items()}

    def encode(self) -> bytes:
        """TYPE + DATA (the envelope adds the rest)."""
        return bytes((self.frame_type,)) + self.LAYOUT.build(self)

    @classmethod
    def decode_data(cls, data: bytes) -> Message:
        """Decode DATA (the bytes after TYPE)."""
        return cls.LAYOUT.parse(data)


M = TypeVar("M", bound=Message)


class Layout:
    """The wire layout of one message class, with its compiled structs."""

    def __init__(self, cls: type[Message], status_field: str | None, optional_from: str | None) -> None:
        self.cls = cls
        self.label = f"{cls.TYPE:02X} ({cls.PROFILE or 'common'})"
        fs = [f for f in dataclasses.fields(cls) if "kind" in f.metadata]
        self.names: tuple[str, ...] = tuple(f.name for f in fs)
        self.kinds: dict[str, Kind] = {f.name: f.metadata["kind"] for f in fs}
        self.required = frozenset(f.name for f in fs if f.default is MISSING)
        self.status_field = status_field
        self._fast: dict[tuple[str, ...], struct.Struct | None] = {}
        # Variable-size forms: a checked parser, DATA → raw values (see _variable_parser).
        self._variable: dict[tuple[str, ...], Callable[[bytes], dict[str, Any]]] = {}
        # Prefix forms: (names, fixed length or None, compiled struct, converters).
        self.forms: list[tuple[tuple[str, ...], int | None, Any, list[tuple[str, Callable[[Any], Any]]]]] = []
        self.full = self._form(self.names)
        self.head = self._form(self.names[: self.names.index(status_field) + 1]) if status_field else None
        self.pre_optional = self._form(self.names[: self.names.index(optional_from)]) if optional_from else None
        self._full_size = self.full[1]
        self._parse_full = _full_parser(self)
        # Kinds that encode None themselves (all-zero dates) do not make a field absent.
        self._nullable = frozenset(n for n, k in self.kinds.items() if k.nullable)

    def _form(self, names: tuple[str, ...]) -> tuple[tuple[str, ...], int | None, Any, list[tuple[str, Callable[[Any], Any]]]]:
        kinds = [self.kinds[n] for n in names]
        sizes = [k.size for k in kinds if k.size is not None]
        size = sum(sizes) if len(sizes) == len(kinds) else None
        struct = cs.Struct(*[n / self.kinds[n].con for n in names], cs.Terminated)
        try:
            struct = struct.compile()
        except Exception:  # pragma: no cover - construct falls back per field already
            pass
        convs = [(n, decode) for n in names if (decode := self.kinds[n].decode) is not None]
        self._fast[names] = _struct_of(kinds) if size is not None else None
        if size is None:
            self._variable[names] = _variable_parser(self, names)
        return names, size, struct, convs

    # -- decoding --------------------------------------------------------------------
    def parse(self, data: bytes) -> Message:
        if len(data) == self._full_size and self._parse_full is not None:
            return self._parse_full(data)  # hot path: the complete frame of a fixed layout
        return self._parse_form(data)

    def _field_error(self, name: str, err: Exception, data: bytes) -> FieldError:
        detail = err.detail if isinstance(err, FieldError) else f"{type(err).__name__}: {err}"
        return FieldError(f"{self.label} {name}: {detail}", data)

    def _parse_form(self, data: bytes) -> Message:
        n = len(data)
        form = self.full
        if n != form[1]:
            if self.head is not None and n == self.head[1]:
                form = self.head
            elif self.pre_optional is not None and n == self.pre_optional[1]:
                form = self.pre_optional
            elif form[1] is not None:
                raise LayoutError(self._length_message(n), data)
        names, _, _, convs = form
        fast = self._fast[names]
        if fast is not None:
            values = dict(zip(names, fast.unpack(data)))  # n is the form's size: checked above
        else:
            values = self._variable[names](data)
        for name, conv in convs:
            try:
                values[name] = conv(values[name])
            except _CONVERTER_ERRORS as err:
                raise self._field_error(name, err, data) from None
        if form is self.head and self.status_field is not None and values[self.status_field] == 0:
            raise LayoutError(f"{self.label}: frame ends after {self.status_field} 00; only an error frame may", data)
        return self.cls(**values)

    def _length_message(self, n: int) -> str:
        allowed = [f"{self.head[1]} (error frame)"] if self.head is not None else []
        if self.pre_optional is not None:
            allowed.append(str(self.pre_optional[1]))
        full = self.full[1]
        allowed.append(str(full) if full is not None else f"at least {_fixed_size(self, self.full[0])}")
        return f"{self.label} needs {' or '.join(allowed)} data bytes after TYPE, got {n}"

    # -- encoding --------------------------------------------------------------------
    def form_of(self, msg: Message) -> tuple[tuple[str, ...], int | None, Any, list[tuple[str, Callable[[Any], Any]]]]:
        """Which form ``msg`` takes: the shortest whose omitted fields are all None."""
        for form in (self.head, self.pre_optional):
            if form is not None and all(getattr(msg, n) is None for n in self.names[len(form[0]):]):
                return form
        return self.full

    def build(self, msg: Message) -> bytes:
        form = self.form_of(msg)
        missing = [n for n in form[0] if getattr(msg, n) is None and n not in self._nullable]
        if missing:
            raise EncodeError(f"{self.label}: fields {', '.join(missing)} are missing")
        if form is self.head and self.status_field is not None and getattr(msg, self.status_field) == 0:
            raise EncodeError(f"{self.label}: only an error frame ({self.status_field} not 00) may omit the fields after it")
        values: dict[str, Any] = {}
        for name in form[0]:
            kind = self.kinds[name]
            value = getattr(msg, name)
            try:
                values[name] = kind.encode(value) if kind.encode is not None else value
            except FieldError as err:
                raise EncodeError(f"{self.label} {name}: {err.detail}") from None
        for name in form[0]:
            src = self.kinds[name].length_from
            if src is not None and len(values[name]) != values[src]:
                raise EncodeError(f"{self.label} {name}: {len(values[name])} bytes but {src} says {values[src]}")
        try:
            built: bytes = form[2].build(values)  # construct is untyped: say what it returns
        except (cs.ConstructError, struct.error, ValueError, TypeError, OverflowError) as err:
            raise EncodeError(f"{self.label}: {err}") from None
        return built


def _full_parser(layout: Layout) -> Callable[[bytes], Message] | None:
    """The hot path of a fixed-size layout: one generated function, DATA → message.

    ``struct`` unpacks the complete frame (see :func:`_struct_of`), each value goes
    through its kind's converter if it has one and straight into the message's slot,
    bypassing the frozen dataclass ``__init__`` (``object.__setattr__`` per field, the
    slowest part of decoding otherwise). Only wire fields exist on message classes, so
    every slot is filled. Generated once per layout with one statement per field, as
    ``dataclasses`` generates ``__init__``: a loop over the fields costs as much again.
    None when the layout has no fixed size or the class has fields that are not on the
    wire; :meth:`Layout._parse_form` handles those.
    """
    cls, names = layout.cls, layout.names
    fast = layout._fast[names]
    if fast is None or any(f.name not in names for f in dataclasses.fields(cls)):
        return None
    env: dict[str, Any] = {"unpack": fast.unpack, "new": object.__new__, "cls": cls,
                           "CONVERTER_ERRORS": _CONVERTER_ERRORS, "fail": layout._field_error}
    lines = ["def parse_full(data):", "    v = unpack(data)", "    obj = new(cls)"]
    for i, name in enumerate(names):
        env[f"set{i}"] = getattr(cls, name).__set__  # the slot's member descriptor
        conv = layout.kinds[name].decode
        if conv is None:
            lines.append(f"    set{i}(obj, v[{i}])")
        else:
            env[f"conv{i}"] = conv
            lines += ["    try:",
                      f"        set{i}(obj, conv{i}(v[{i}]))",
                      "    except CONVERTER_ERRORS as err:",
                      f"        raise fail({name!r}, err, data) from None"]
    lines.append("    return obj")
    exec("\n".join(lines), env)  # noqa: S102 - source built above from the layout's field names
    parse_full: Callable[[bytes], Message] = env["parse_full"]
    return parse_full


_STRUCT_CODES = {id(cs.Int8ub): "B", id(cs.Int16ub): "H", id(cs.Int32ub): "I"}


def _struct_of(kinds: list[Kind]) -> struct.Struct | None:
    """The construct layout compiled one step further, to a C ``struct`` format.

    The construct definition stays the single source of the layout; for fixed-size
    layouts of big-endian integers and byte strings, ``struct.unpack`` decodes the same
    bytes several times faster than construct's compiled parser, on the hot path of
    every RSU frame. Anything else keeps construct's compiled parser.
    """
    fmt = ">"
    for k in kinds:
        code = _STRUCT_CODES.get(id(k.con))
        if code is None:
            if isinstance(k.con, cs.Bytes) and isinstance(k.con.length, int):
                code = f"{k.con.length}s"
            else:
                return None
        fmt += code
    return struct.Struct(fmt)


# What a field kind's converter (raw → typed, ``Kind.decode``) may raise for bytes that
# mean nothing. The converters of laned.protocol.fields raise FieldError only, for every
# input of their size; ValueError (UnicodeDecodeError is one), IndexError and
# OverflowError are what Python's own date, codec and indexing raise, caught as well so
# that a converter added later cannot let bad bytes stop the link. Not Exception: a
# TypeError or AttributeError is a bug in laned and must show. Handlers cost nothing
# until something is raised (3.11 zero-cost exceptions), so the hot path stays as fast.
_CONVERTER_ERRORS = (FieldError, ValueError, IndexError, OverflowError)


def _fixed_size(layout: Layout, names: tuple[str, ...]) -> int:
    """Bytes of the fixed-size fields among ``names`` (the least a variable form needs)."""
    return sum(layout.kinds[n].size or 0 for n in names)


def _variable_parser(layout: Layout, names: tuple[str, ...]) -> Callable[[bytes], dict[str, Any]]:
    """A checked parser of one variable-size form: DATA → raw values, or LayoutError.

    Every variable layout of the profiles is a fixed-size head and one variable field at
    the end: ``Rest`` (the TCP profiles' raw tail) or bytes whose count an earlier field
    holds (EF04Info after EF04Length). That shape gets ``struct.unpack_from`` for the
    head and two length checks. Any other shape (a variable field with fields after it)
    gets construct's interpreted parser, which checks every read and raises only
    ``ConstructError``; both end in a :class:`LayoutError` naming the frame's bytes.
    """
    label = layout.label
    kinds = [layout.kinds[n] for n in names]
    *head_kinds, last = kinds
    head = _struct_of(head_kinds) if all(k.size is not None for k in head_kinds) else None
    counted = last.length_from is not None and last.length_from in names[:-1]
    if head is not None and last.size is None and (counted or last is Rest):
        need, tail_name, head_names = head.size, names[-1], names[:-1]
        unpack_from = head.unpack_from
        count_at = head_names.index(last.length_from) if counted else -1

        def parse(data: bytes) -> dict[str, Any]:
            n = len(data)
            if n < need:
                raise LayoutError(layout._length_message(n), data)
            v = unpack_from(data)
            tail = data[need:]
            if count_at >= 0 and len(tail) != v[count_at]:
                raise LayoutError(f"{label} {tail_name}: {head_names[count_at]} says {v[count_at]} bytes, "
                                  f"{len(tail)} follow", data)
            values = dict(zip(head_names, v))
            values[tail_name] = tail
            return values

        return parse

    interpreted = cs.Struct(*[n / layout.kinds[n].con for n in names], cs.Terminated)

    def parse_interpreted(data: bytes) -> dict[str, Any]:
        try:
            c = interpreted.parse(data)
        except cs.ConstructError as err:  # StreamError (short), TerminatedError (bytes left over)…
            raise LayoutError(f"{label}: {len(data)} data bytes do not fit the layout ({err})", data) from None
        return {name: c[name] for name in names}

    return parse_interpreted


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(wire, field))
def message(type_code: int, sender: Sender, *, profile: str = "", status_field: str | None = None,
            optional_from: str | None = None) -> Callable[[type[M]], type[M]]:
    """Make ``cls`` a frozen message dataclass of frame type ``type_code``.

    ``status_field`` names the RSU ErrorCode/Status field after which a non-zero value
    may end the frame; ``optional_from`` the first field of a tail that may be absent.
    """

    def wrap(cls: type[M]) -> type[M]:
        cls = dataclass(frozen=True, slots=True, kw_only=True)(cls)
        cls.TYPE = type_code
        cls.SENDER = sender
        cls.PROFILE = profile
        cls.LAYOUT = Layout(cls, status_field, optional_from)
        return cls

    return wrap


# -- messages every profile shares ----------------------------------------------------

@dataclass(frozen=True, slots=True)
class EmptyReply(Message):
    """The classic envelope's empty reply ``FF FF | RSCTL | BCC | FF``: no TYPE, no DATA."""

    origin: Sender = Sender.PC

    @property
    def frame_type(self) -> int:
        return -1

    @property
    def type_name(self) -> str:
        return "empty"

    @property
    def sender(self) -> Sender:
        return self.origin

    def fields(self) -> dict[str, Any]:
        return {}

    def encode(self) -> bytes:
        return b""


@dataclass(frozen=True, slots=True)
class OpaqueMessage(Message):
    """A frame type the profile knows but whose layout is not confirmed: DATA kept raw."""

    type_code: int
    data: bytes

    @property
    def frame_type(self) -> int:
        return self.type_code

    @property
    def sender(self) -> Sender:
        return Sender.RSU if self.type_code >> 4 in (0xA, 0xB) else Sender.PC

    def fields(self) -> dict[str, Any]:
        return {"data": self.data}

    def encode(self) -> bytes:
        return bytes((self.type_code,)) + self.data


def rest_field() -> Any:
    return wire(Rest)


def decode_payload(messages: Mapping[int, type[Message]], payload: bytes, opaque: frozenset[int]) -> Message:
    """Dispatch TYPE + DATA to the profile's message class."""
    from laned.protocol.errors import UnknownTypeError

    if not payload:
        return EmptyReply()
    t = payload[0]
    cls = messages.get(t)
    if cls is not None:
        return cls.LAYOUT.parse(payload[1:])
    if t in opaque:
        return OpaqueMessage(type_code=t, data=payload[1:])
    raise UnknownTypeError(f"frame type {t:02X} is not in this profile", payload)


__all__ = [
    "EmptyReply",
    "Layout",
    "Message",
    "OpaqueMessage",
    "ProtocolError",
    "Sender",
    "decode_payload",
    "message",
    "wire",
]
