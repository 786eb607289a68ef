"""What the centre takes in from the lanes: each received payload checked against the
contract, and the transactions of ``tx`` and ``tx/batch`` turned into ledger rows.

A payload that breaks the contract is logged (topic, member, why; never a plate or a card
number), counted in :attr:`Intake.dropped` by channel and in the lane's ``invalid`` count,
and dropped: the lane sends a transaction again until it is acknowledged, so nothing is
lost, and a person reads the log. A ``TransactionBatch`` is checked and dropped whole.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from laned.strict_json import reject_constant
from laned.uplink.contract import ContractError
from laned.uplink.messages import TransactionBatch, TransactionMsg, UplinkMessage, compact_json

log = logging.getLogger("laned.centre")
M = TypeVar("M", bound=UplinkMessage)

PERSONAL_MEMBERS = (".plate", ".card_number")  # masked in every log (laned/masking.py)
TRANSACTION_CHANNELS = ("tx", "txBatch")


@dataclass(frozen=True, slots=True)
class Inbound:
    """A lane's message as received: its topic, the channel and lane the topic names, its bytes.

    ``data`` is a transaction message's JSON, parsed by the receiving loop (a batch's rows
    are counted, and the ledger keeps each row in one form, whichever way it came); None
    when it is not JSON, which the check then says. ``rows`` is what the message weighs in a
    commit batch: a ``TransactionBatch``'s rows, as far as they could be counted unchecked.
    """

    topic: str
    channel: str
    lane_id: str
    payload: Any  # bytes as delivered; anything else is refused as not a payload
    rows: int = 1
    data: Any = None

    @classmethod
    def received(cls, topic: str, channel: str, lane_id: str, payload: Any) -> Inbound:
        if channel not in TRANSACTION_CHANNELS or not isinstance(payload, (bytes, bytearray, str)):
            return cls(topic, channel, lane_id, payload)
        try:
            data = json.loads(payload, parse_constant=reject_constant)
        except ValueError:
            return cls(topic, channel, lane_id, payload)  # refused, with the reason, when checked
        rows = data.get("transactions") if isinstance(data, dict) and channel == "txBatch" else None
        return cls(topic, channel, lane_id, payload, rows=max(1, len(rows)) if isinstance(rows, list) else 1,
                   data=data)


class Intake:
    """Checks what the lanes send and counts what it drops; safe from the loop and the database thread."""

    def __init__(self, note_invalid: Callable[[str, dt.datetime], None]) -> None:
        self._note_invalid = note_invalid  # the ledger's count of a lane's invalid payloads
        self.dropped: collections.Counter[str] = collections.Counter()  # invalid payloads by channel
        self._lock = threading.Lock()

    def parse(self, cls: type[M], item: Inbound) -> M | None:
        """The message, checked against the contract; None (logged, counted) when it breaks it."""
        try:
            if item.data is not None:
                msg = cls.from_dict(item.data)
            elif isinstance(item.payload, (bytes, bytearray, str)):
                msg = cls.from_json(item.payload)
            else:
                raise ContractError(cls.MESSAGE, [("$", f"an empty or non-text payload "
                                                        f"({type(item.payload).__name__})")])
            named = getattr(msg, "lane_id", item.lane_id)
            if named != item.lane_id:
                raise ContractError(cls.MESSAGE, [("$.lane_id", f"{named!r} on lane {item.lane_id}'s topic")])
        except ContractError as err:
            with self._lock:
                self.dropped[item.channel] += 1
            # The reason may quote the value: never a plate or a card number in a log line.
            reason = "value not logged (personal data); it breaks the contract's rule for this member" \
                if err.path.endswith(PERSONAL_MEMBERS) else err.reason
            log.warning("centre: lane %s: dropped a %s on %s: %s: %s (the lane's software does not follow the "
                        "uplink contract; the lane will re-send a transaction until it is acknowledged)",
                        item.lane_id, cls.MESSAGE, item.topic, err.path, reason)
            return None
        return msg

    def parse_all(self, cls: type[M], items: list[Inbound], now: dt.datetime) -> tuple[list[M], list[str]]:
        """In the database thread: the valid messages of a commit batch and their text as received."""
        msgs: list[M] = []
        texts: list[str] = []
        for item in items:
            msg = self.parse(cls, item)
            if msg is None:
                self._note_invalid(item.lane_id, now)
                continue
            msgs.append(msg)
            payload = item.payload
            texts.append(payload if isinstance(payload, str) else bytes(payload).decode("utf-8"))
        return msgs, texts

    def transactions(self, items: list[Inbound], now: dt.datetime) -> tuple[list[TransactionMsg], list[str]]:
        """In the database thread: the transactions of ``tx`` and ``tx/batch`` messages, each with
        its JSON as the ledger keeps it: written compactly (as laned writes it), so that a row
        that came alone and again in a batch is recognised as the same row."""
        msgs: list[TransactionMsg] = []
        texts: list[str] = []
        for item in items:
            if item.channel == "txBatch":
                batch = self.parse(TransactionBatch, item)
                if batch is not None:
                    msgs += batch.transactions
                    texts += [compact_json(row) for row in item.data["transactions"]]
                    continue
            else:
                single = self.parse(TransactionMsg, item)
                if single is not None:
                    msgs.append(single)
                    texts.append(compact_json(item.data))
                    continue
            self._note_invalid(item.lane_id, now)
        return msgs, texts
