"""The uplink contract: the AsyncAPI 3.0 document of every topic and payload, as code.

``docs/asyncapi.yaml`` is the contract between laned and the toll centre. A copy ships
in the package beside this module (``laned/uplink/asyncapi.yaml``; the tests hold the two
identical) because laned checks what the centre sends against it at run time. This module
reads it and offers what the uplink needs from it:

* :func:`validate` — a payload (a JSON object as a ``dict``) against a message's JSON
  Schema; :class:`ContractError` names the message, the JSON path and what was wrong;
* :func:`topic` — the topic of a channel (or of a message) for a lane, from the channel's
  address, the lane id checked against the contract's pattern;
* :func:`route` — which channel and lane an incoming topic belongs to;
* :func:`delivery` — QoS, retain and MQTT 5 message expiry of a message, from the
  document's operation bindings, so that no number is written twice.

Sans-IO apart from reading the document once: :func:`contract` reads it on first use
(~10–100 ms) and keeps it, so the daemon calls it at start, before its event loop serves
devices. Validating a payload that conforms costs ~22 µs for a Transaction (2 cores,
Python 3.11; 0.27 ms with jsonschema alone): a check compiled by fastjsonschema
(:meth:`Contract.fast_check`, built on a message's first use, 2–15 ms) accepts it; a
payload it refuses is checked again by jsonschema (0.3–1 ms), which writes the report. The
uplink validates what it *receives* (commands, acks, answers, lists, a few a second at most),
the reference centre every transaction it receives; what laned *sends* is built by
:mod:`laned.uplink.messages`, which the tests hold to the contract, so sending does not pay
for a check.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastjsonschema
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

CONTRACT_FILE = Path(__file__).with_name("asyncapi.yaml")
ASYNCAPI_VERSION = "3.0.0"
# Base URI the document is registered under, so "#/components/schemas/..." in it resolves.
_BASE_URI = "urn:laned:uplink:asyncapi"
_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# libyaml's safe loader reads the document ~10× faster than the pure-Python one.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_REPORTED = 5  # errors listed in one ContractError; the rest are counted
_SCHEMAS = "#/components/schemas/"
# Keywords that only annotate (JSON Schema 2020-12, meta-data and core vocabularies): no check reads them.
_ANNOTATIONS = frozenset({"description", "title", "examples", "$comment", "default", "deprecated", "readOnly",
                          "writeOnly"})
# Keywords whose value maps names to schemas, and keywords whose value is data, not a schema.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "dependentSchemas", "$defs"})
_VALUES = frozenset({"enum", "const", "required", "dependentRequired", "type", "pattern", "format"})
# The fast check (fastjsonschema, draft-07 code generation) compiles only these keywords: each
# means the same in draft-07 as in 2020-12 (read against fastjsonschema 2.22's generators: bool
# is neither integer nor number, 3.0 is an integer, enum/const tell True from 1, minLength counts
# code points, uniqueItems tells True from 1). A schema with any other keyword — prefixItems,
# unevaluated*, dependentRequired, $defs, a $ref left (a recursive one), items as an array,
# dependencies, additionalItems, multipleOf... — gets no fast check: jsonschema alone decides.
_FAST_SCHEMA = frozenset({"not", "if", "then", "else", "additionalProperties", "items"})
_FAST_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf"})
_FAST_NUMBERS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
                           "minItems", "maxItems", "minProperties", "maxProperties"})
_FAST_DATA = frozenset({"type", "enum", "const", "required", "pattern", "uniqueItems"})
# Annotations in 2020-12 (no FormatChecker is passed, so format does not assert either) that
# draft-07 fastjsonschema would assert (contentEncoding even decodes the value): left out.
_FAST_DROPPED = frozenset({"format", "contentEncoding", "contentMediaType", "contentSchema"})
_FAST_TYPES = frozenset({"null", "boolean", "object", "array", "number", "integer", "string"})
# Property names the generated code can hold as they are (it writes them into string literals).
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DRAFT07 = "http://json-schema.org/draft-07/schema#"


class ContractError(ValueError):
    """A payload, topic or lane id that does not conform to the contract.

    ``message`` is the contract message (or channel) name, ``path`` the JSON path of the
    first offending member (``$.args.seq``; ``$`` for the whole payload), ``reason`` what
    was wrong with it; ``problems`` lists every (path, reason) found, first one first.
    """

    def __init__(self, message: str, problems: Iterable[tuple[str, str]], *, more: int = 0) -> None:
        self.problems = tuple(problems) or (("$", "does not conform"),)
        self.message = message
        self.path, self.reason = self.problems[0]
        listed = "; ".join(f"{path}: {reason}" for path, reason in self.problems)
        extra = f" (and {more} more)" if more else ""
        super().__init__(f"{message}: {listed}{extra}")


class Direction(enum.StrEnum):
    """From laned's point of view, as the AsyncAPI operations say it."""

    SEND = "send"  # laned publishes, the centre subscribes
    RECEIVE = "receive"  # the centre publishes, laned subscribes


@dataclass(frozen=True, slots=True)
class Delivery:
    """How a message travels: the operation's MQTT binding."""

    channel: str
    address: str  # with its {lane_id} parameter
    direction: Direction
    qos: int
    retain: bool
    # Seconds; None: no expiry, or one the sender sets per message (the binding is a schema).
    expiry_s: int | None


def _json_path(parts: Iterable[str | int]) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problem(error: ValidationError) -> tuple[str, str]:
    """(path, reason) for one validation error, naming the member itself where it can."""
    parts = list(error.absolute_path)
    instance: Any = error.instance
    rule: Any = error.validator_value  # the keyword's value in the schema
    schema: Any = error.schema
    if error.validator == "required" and isinstance(instance, dict):
        missing = [name for name in rule if name not in instance]
        if missing:
            return _json_path([*parts, missing[0]]), "required member is missing"
    if error.validator == "additionalProperties" and isinstance(instance, dict) and isinstance(schema, dict):
        allowed = set(schema.get("properties", {}))
        extra = sorted(name for name in instance if name not in allowed)
        if extra:
            return _json_path([*parts, extra[0]]), "member not in the contract (unexpected)"
    if error.validator == "not" and isinstance(rule, dict) and isinstance(instance, dict):
        present = [name for name in rule.get("required", ()) if name in instance]
        if present:
            return _json_path([*parts, present[0]]), "member not allowed here"
    reasons = {
        "const": lambda: f"{_short(instance)} where {_short(rule)} is required",
        "enum": lambda: f"{_short(instance)} is not one of {', '.join(map(str, rule))}",
        "pattern": lambda: f"{_short(instance)} does not match {rule}",
        "type": lambda: f"{_short(instance)} is not of type {rule}",
    }
    reason = reasons.get(str(error.validator))
    return _json_path(parts), reason() if reason else error.message


def _sort_key(error: ValidationError) -> tuple[int, str]:
    return (len(error.absolute_path), _json_path(error.absolute_path))


def _ecma_end(pattern: str) -> str:
    """``pattern`` with its final end anchor as JSON Schema means it. Its patterns are
    ECMA-262, where the dollar matches only at the end of the string; Python's (which
    jsonschema searches with) also matches before a final newline, so ``^[0-9]{4}$`` would
    take "3701" followed by a newline: a lane id or a card network with a line break in it.
    The dollar becomes Python's end of string, ``\\Z``."""
    backslashes = len(pattern[:-1]) - len(pattern[:-1].rstrip("\\"))
    if pattern.endswith("$") and backslashes % 2 == 0:
        return pattern[:-1] + r"\Z"
    return pattern


def _fast_schema(schema: Any, patterns: set[str]) -> Any:
    """``schema`` (inlined, see :meth:`Contract._inline`) as the fast check compiles it, without
    the keywords of :data:`_FAST_DROPPED`; None if it holds anything outside what draft-07
    and 2020-12 read alike (see :data:`_FAST_SCHEMA`). Its patterns are added to ``patterns``."""
    if isinstance(schema, bool):
        return schema
    if not isinstance(schema, Mapping):
        return None
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _FAST_DROPPED:
            continue
        if key in _FAST_SCHEMA:
            out[key] = _fast_schema(value, patterns)
            if out[key] is None:
                return None
        elif key in _FAST_SCHEMA_LISTS:
            if not isinstance(value, list) or not value:
                return None
            out[key] = [_fast_schema(s, patterns) for s in value]
            if any(s is None for s in out[key]):
                return None
        elif key == "properties":
            if not isinstance(value, Mapping) or not all(isinstance(n, str) and _PLAIN_NAME.match(n) for n in value):
                return None
            out[key] = {name: _fast_schema(s, patterns) for name, s in value.items()}
            if any(s is None for s in out[key].values()):
                return None
        elif key in _FAST_NUMBERS:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                return None
            out[key] = value
        elif key in _FAST_DATA:
            if not _fast_data(key, value):
                return None
            if key == "pattern":
                patterns.add(value)
            if key == "const":
                # fastjsonschema generates the same test for const X as for enum [X], but
                # only the enum compiles without detailed exceptions (see fast_check).
                if "enum" in schema:
                    return None
                key, value = "enum", [value]
            out[key] = value
        else:
            return None
    return out


def _fast_data(key: str, value: Any) -> bool:
    """Whether the fast check reads the value of keyword ``key`` as 2020-12 does."""
    if key == "type":
        types = value if isinstance(value, list) else [value]
        return bool(types) and all(isinstance(t, str) and t in _FAST_TYPES for t in types)
    if key == "required":
        return (isinstance(value, list) and len(set(value)) == len(value)
                and all(isinstance(n, str) and _PLAIN_NAME.match(n) for n in value))
    if key == "pattern":
        return isinstance(value, str)
    if key == "uniqueItems":
        return isinstance(value, bool)
    return key in ("enum", "const") and _json_values([value]) and (key == "const" or isinstance(value, list))


_SCALARS = (str, int, float, type(None))  # bool is an int


def _json_values(value: Any) -> bool:
    """Whether ``value`` is made only of what ``json.loads`` returns (dict, list, str, int,
    float, bool, None; subclasses too): the values on which the fast check and jsonschema are
    known to agree (fastjsonschema, unlike jsonschema, counts a tuple as an array)."""
    if isinstance(value, dict):
        for item in value.values():
            if not isinstance(item, _SCALARS) and not _json_values(item):
                return False
        return True
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, _SCALARS) and not _json_values(item):
                return False
        return True
    return isinstance(value, _SCALARS)


class Contract:
    """The parsed AsyncAPI document and the validators built from it."""

    def __init__(self, document: Mapping[str, Any], *, source: str = "") -> None:
        self.source = source
        if document.get("asyncapi") != ASYNCAPI_VERSION:
            raise ContractError(source or "contract", [("$.asyncapi", f"expected {ASYNCAPI_VERSION}, found "
                                                                       f"{document.get('asyncapi')!r}")])
        self.document = document
        self._registry: Registry[Any] = Registry().with_resource(
            _BASE_URI, Resource.from_contents(dict(document), default_specification=DRAFT202012))
        self.messages: Mapping[str, Mapping[str, Any]] = document["components"]["messages"]
        self.channels: Mapping[str, Mapping[str, Any]] = document["channels"]
        self._channel_of_message: dict[str, str] = {}
        for channel, spec in self.channels.items():
            for ref in spec.get("messages", {}).values():
                self._channel_of_message[self._ref_name(ref, "#/components/messages/")] = channel
        self._operation_of_channel: dict[str, Mapping[str, Any]] = {}
        for operation in document.get("operations", {}).values():
            channel = self._ref_name(operation["channel"], "#/channels/")
            self._operation_of_channel[channel] = operation
        self._validators: dict[str, Validator] = {}
        self._fast: dict[str, Callable[[Any], object] | None] = {}
        self._routes = [(channel, self._address_regex(spec["address"])) for channel, spec in self.channels.items()]

    @classmethod
    def load(cls, path: Path = CONTRACT_FILE) -> Contract:
        with path.open(encoding="utf-8") as f:
            document = yaml.load(f, Loader=_SafeLoader)  # a safe loader (libyaml's when built)
        if not isinstance(document, dict):
            raise ContractError(str(path), [("$", "the document is not a YAML mapping")])
        return cls(document, source=str(path))

    @staticmethod
    def _ref_name(ref: Mapping[str, Any], prefix: str) -> str:
        target = str(ref["$ref"])
        if not target.startswith(prefix):
            raise ContractError("contract", [("$ref", f"{target!r} does not start with {prefix!r}")])
        return target[len(prefix):]

    def _address_regex(self, address: str) -> re.Pattern[str]:
        parts = _PARAMETER.split(address)
        regex = ""
        for i, part in enumerate(parts):
            regex += re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/+#]+)"
        return re.compile(regex + r"\Z")

    # -- payloads ----------------------------------------------------------------------------
    def payload_schema(self, message: str) -> Mapping[str, Any]:
        """The message's payload schema as written (usually a $ref into components.schemas)."""
        try:
            payload: Mapping[str, Any] = self.messages[message]["payload"]
        except KeyError:
            raise ContractError(message, [("$", f"no message {message!r} in the contract (known: "
                                                f"{', '.join(sorted(self.messages))})")]) from None
        return payload

    def validator(self, message: str) -> Validator:
        """The message's compiled validator (built on first use, then kept).

        Its schema is the payload schema with every ``$ref`` into ``components.schemas``
        replaced by the schema it names, once, here (:meth:`_inline`): resolving a ``$ref``
        through the registry on every check was half the cost of a check (0.58 ms of a
        Transaction's, 2 cores, Python 3.11; 0.27 ms inlined). The same keywords are
        checked; only annotations (``description``…) are left out.
        """
        found = self._validators.get(message)
        if found is None:
            payload = self.payload_schema(message)  # a known message, or ContractError
            schema = self._inline(payload, ())
            # A $ref left (one that names itself, directly or not) resolves through the document.
            found = self._validators[message] = Draft202012Validator(schema, registry=self._registry)
        return found

    def _inline(self, schema: Any, within: tuple[str, ...]) -> Any:
        """``schema`` with its ``$ref``s to ``#/components/schemas/X`` replaced by X (recursively);
        a recursive one stays a ``$ref``, made absolute so that it resolves in the document."""
        if isinstance(schema, list):
            return [self._inline(s, within) for s in schema]
        if not isinstance(schema, Mapping):
            return schema
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key == "$ref" or key in _ANNOTATIONS or key.startswith("x-"):
                continue
            if key in _SCHEMA_MAPS and isinstance(value, Mapping):  # names -> schemas, not keywords
                out[key] = {name: self._inline(s, within) for name, s in value.items()}
            elif key == "pattern" and isinstance(value, str):
                out[key] = _ecma_end(value)
            elif key in _VALUES:  # data, not schemas: taken as written
                out[key] = value
            else:
                out[key] = self._inline(value, within)
        ref = schema.get("$ref")
        if ref is None:
            return out
        ref = str(ref)
        name = ref.removeprefix(_SCHEMAS) if ref.startswith(_SCHEMAS) else None
        if name is None or name in within or name not in self.document["components"]["schemas"]:
            target: Any = {"$ref": f"{_BASE_URI}{ref}" if ref.startswith("#") else ref}
        else:
            target = self._inline(self.document["components"]["schemas"][name], (*within, name))
        # In 2020-12 a $ref beside other keywords applies with them, as allOf does.
        return {"allOf": [target], **out} if out else target

    def fast_check(self, message: str) -> Callable[[Any], object] | None:
        """The message's fast check (built on first use, then kept); None when it has none.

        fastjsonschema compiles the schema of :meth:`validator` into plain Python (~12× faster
        than jsonschema on a conforming Transaction) with draft-07 semantics; :func:`_fast_schema` admits
        only schemas in which draft-07 and 2020-12 mean the same. The check returns when the
        payload conforms and raises ``fastjsonschema.JsonSchemaValueException`` when it does not.
        """
        if message in self._fast:
            return self._fast[message]
        patterns: set[str] = set()
        schema = _fast_schema(self.validator(message).schema, patterns)
        check: Callable[[Any], object] | None = None
        if isinstance(schema, dict):
            try:
                # No detailed exceptions: a refusal is reported by jsonschema anyway, and an
                # if/then/else is a try/except in the generated code, so every row whose
                # state is not the if's raises one; detailed, each formats the frame's locals
                # (a third of a Transaction's check).
                check = fastjsonschema.compile({"$schema": _DRAFT07, **schema}, use_default=False,
                                               use_formats=False, detailed_exceptions=False)
            except Exception:  # noqa: BLE001 - what it cannot compile, jsonschema alone checks
                check = None
            # fastjsonschema turns each unescaped "$" of a pattern into "\Z" ("G1\n" would not match
            # "^G1$"); jsonschema searches the pattern as written: so does the fast check.
            table: Any = getattr(check, "__globals__", {}).get("REGEX_PATTERNS")
            if check is not None and isinstance(table, dict) and patterns <= table.keys():
                table.update({pattern: re.compile(pattern) for pattern in patterns})
            else:
                check = None
        self._fast[message] = check
        return check

    def warm(self) -> Contract:
        """Build every message's validator and fast check now (~0.1 s): the daemon calls this
        at start, so that the first ack or command received does not compile its schema on
        the event loop."""
        for message in self.messages:
            self.validator(message)
            self.fast_check(message)
        return self

    def fast_accepts(self, message: str, payload: Any) -> bool | None:
        """The fast check's verdict: True (conforms), False (does not), None (no verdict: the
        message has no fast check, or the payload holds something other than JSON values)."""
        check = self.fast_check(message)
        if check is None or not _json_values(payload):
            return None
        try:
            check(payload)
        except fastjsonschema.JsonSchemaValueException:
            return False
        except Exception:  # noqa: BLE001 - a crash is no verdict: jsonschema decides
            return None
        return True

    def problems(self, message: str, payload: Any) -> list[tuple[str, str]]:
        """Every (JSON path, reason) the payload breaks, outermost first; [] if it conforms."""
        errors = sorted(self.validator(message).iter_errors(payload), key=_sort_key)
        return list(dict.fromkeys(_problem(e) for e in errors))

    def validate(self, message: str, payload: Any) -> None:
        """Raise :class:`ContractError` unless ``payload`` conforms to the message's schema.

        The fast check (:meth:`fast_check`) accepts; what it refuses (or has no verdict on)
        jsonschema checks again (:meth:`problems`), for the report, so that the errors read the
        same whichever check ran.
        """
        verdict = self.fast_accepts(message, payload)
        if verdict:
            return
        found = self.problems(message, payload)
        if found:
            raise ContractError(message, found[:MAX_REPORTED], more=max(0, len(found) - MAX_REPORTED))
        if verdict is False:  # the two checks disagree: refused all the same, never let through
            raise ContractError(message, [("$", "refused by the fast check (fastjsonschema) though jsonschema "
                                                 "finds no problem: a bug in laned.uplink.contract")])

    # -- topics ------------------------------------------------------------------------------
    def channel_of(self, name: str) -> str:
        """The channel key for a channel key or a message name."""
        if name in self.channels:
            return name
        if name in self._channel_of_message:
            return self._channel_of_message[name]
        raise ContractError(name, [("$", f"no channel or message {name!r} in the contract (channels: "
                                         f"{', '.join(self.channels)})")])

    @functools.cached_property
    def lane_id_pattern(self) -> re.Pattern[str]:
        spec = self.document["components"]["parameters"]["lane_id"]
        return re.compile(str(spec["x-pattern"]))

    def check_lane_id(self, lane_id: str) -> str:
        if not isinstance(lane_id, str) or not self.lane_id_pattern.fullmatch(lane_id):
            raise ContractError("lane_id", [("lane_id", f"{_short(lane_id)} does not match "
                                                        f"{self.lane_id_pattern.pattern}")])
        return lane_id

    def topic(self, name: str, lane_id: str) -> str:
        """The topic of channel (or message) ``name`` for ``lane_id``: ``etc/v1/L1/tx/ack``."""
        address = str(self.channels[self.channel_of(name)]["address"])
        self.check_lane_id(lane_id)
        return _PARAMETER.sub(lambda m: lane_id if m.group(1) == "lane_id" else m.group(0), address)

    def route(self, topic: str) -> tuple[str, str] | None:
        """(channel, lane_id) of a concrete topic; None when it is none of the contract's."""
        for channel, regex in self._routes:
            found = regex.match(topic)
            if found and self.lane_id_pattern.fullmatch(found.group("lane_id")):
                return channel, found.group("lane_id")
        return None

    def message_of(self, channel: str) -> str:
        """The one message a channel carries."""
        names = [m for m, c in self._channel_of_message.items() if c == self.channel_of(channel)]
        if len(names) != 1:
            raise ContractError(channel, [("messages", f"expected one message, found {names}")])
        return names[0]

    # -- delivery ------------------------------------------------------------------------------
    def delivery(self, name: str) -> Delivery:
        """QoS, retain, expiry and direction of channel (or message) ``name``."""
        channel = self.channel_of(name)
        operation = self._operation_of_channel.get(channel)
        if operation is None:
            raise ContractError(channel, [("operations", "no operation uses this channel")])
        binding = operation.get("bindings", {}).get("mqtt", {})
        expiry = binding.get("messageExpiryInterval")
        return Delivery(channel=channel, address=str(self.channels[channel]["address"]),
                        direction=Direction(operation["action"]), qos=int(binding.get("qos", 0)),
                        retain=bool(binding.get("retain", False)),
                        expiry_s=expiry if isinstance(expiry, int) and not isinstance(expiry, bool) else None)

    def subscriptions(self, lane_id: str) -> list[tuple[str, int]]:
        """(topic, QoS) of every channel laned receives on, each named exactly (no wildcard)."""
        out = []
        for channel in self.channels:
            d = self.delivery(channel)
            if d.direction is Direction.RECEIVE:
                out.append((self.topic(channel, lane_id), d.qos))
        return out


@functools.cache
def contract() -> Contract:
    """The packaged contract, read once."""
    return Contract.load()


def validate(message_name: str, payload: Any) -> None:
    """Raise :class:`ContractError` unless ``payload`` conforms to ``message_name``'s schema."""
    contract().validate(message_name, payload)


def topic(name: str, lane_id: str) -> str:
    """The topic of a channel or message for a lane, e.g. ``topic("txAck", "L1")``."""
    return contract().topic(name, lane_id)


def route(topic_name: str) -> tuple[str, str] | None:
    """(channel, lane_id) of an incoming topic; None for a topic not in the contract."""
    return contract().route(topic_name)


def delivery(name: str) -> Delivery:
    """QoS, retain and MQTT 5 message expiry of a channel or message."""
    return contract().delivery(name)
