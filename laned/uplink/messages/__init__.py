"""The uplink's messages as typed values: one frozen dataclass per payload of the contract.

Each message class names its contract message (``MESSAGE``) and converts both ways:

* ``to_dict()`` / ``to_json()`` — the payload as the contract writes it: members with no
  value are left out (never ``null``), bytes as hex (base64 where the contract says so),
  times as RFC 3339;
* ``from_dict()`` / ``from_json()`` — check the payload against the contract first
  (:func:`laned.uplink.contract.validate`), then build the value; anything wrong raises
  :class:`~laned.uplink.contract.ContractError` naming the message and the member.

Field names are the contract's member names. Absolute times are aware ``datetime``\\ s;
*lane times* (``purchase_time``, ``trans_time``: the lane's civil time as the card
records it) are naive; building a payload with the wrong kind raises ``ContractError``.

Signed messages (:class:`CommandRequest`, :class:`ListManifest`) keep the payload they
were read from: :meth:`CommandRequest.signed_bytes` is computed from it, not from a
re-encoding (``...00.000+08:00`` and ``...00+08:00`` are the same time but not the same
bytes). Verifying the signature is the caller's business (a trusted key is needed).

Sans-IO: no clock, no socket, no event loop. Times are passed in.

Each part of the contract has a module holding its codes (enums) and its messages; every public
name is importable from here (``from laned.uplink.messages import CommandRequest``):

* :mod:`~laned.uplink.messages.transactions` — transactions (topics ``tx`` and ``tx/batch``), their
  acknowledgements and reconciliation;
* :mod:`~laned.uplink.messages.lane_state` — lane state (with the last will), health, alarms;
* :mod:`~laned.uplink.messages.commands` — the centre's commands, their arguments and results
  (checking a command is :mod:`laned.uplink.commands`);
* :mod:`~laned.uplink.messages.lists` — status lists and fee tables;
* :mod:`~laned.uplink.messages.codec` — the base class and the JSON conversions they share.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

from laned.uplink.messages.codec import (
    BASE64,
    LANE_TIME,
    NOT_JSON,
    UplinkMessage,
    canonical_json,
    compact_json,
)
from laned.uplink.messages.transactions import (
    AckStream,
    ReconcileAnswer,
    ReconcileOutcome,
    ReconcileResult,
    ReconcileStatus,
    SettledBy,
    TransactionBatch,
    TransactionMsg,
    TxAck,
    transaction_messages,
    transaction_runs,
)
from laned.uplink.messages.outgoing import (
    EncodedRows,
    TransactionBatchOut,
    TransactionOut,
    outbox_messages,
    transaction_payload,
)
from laned.uplink.messages.lane_state import (
    LAST_WILL_REASON,
    ActiveAlarm,
    AlarmCount,
    AlarmMsg,
    Check,
    ClosedBy,
    HealthCounters,
    HealthSnapshot,
    LaneCount,
    LaneState,
    LaneStatus,
    OutboxState,
)
from laned.uplink.messages.commands import (
    COMMAND_ARGS,
    CloseEtcArgs,
    CommandArgs,
    CommandName,
    CommandOutcome,
    CommandRequest,
    CommandResult,
    FetchListArgs,
    OpenEtcArgs,
    PublishHealthArgs,
    RaiseBarrierArgs,
    RefusalReason,
    ResendFromArgs,
    ShowMessageArgs,
)
from laned.uplink.messages.lists import (
    Compression,
    FeeTableVersion,
    ListChunk,
    ListFormat,
    ListKind,
    ListManifest,
    ListRequest,
    ListVersions,
    StatusListVersion,
)

MESSAGE_CLASSES: Mapping[str, type[UplinkMessage]] = types.MappingProxyType({
    cls.MESSAGE: cls for cls in (TransactionMsg, TransactionBatch, TxAck, ReconcileAnswer, ReconcileResult, LaneState,
                                 HealthSnapshot, AlarmMsg, CommandRequest, CommandResult, ListManifest, ListChunk,
                                 ListRequest, ListVersions)
})

__all__ = [
    "BASE64",
    "COMMAND_ARGS",
    "LANE_TIME",
    "LAST_WILL_REASON",
    "MESSAGE_CLASSES",
    "NOT_JSON",
    "AckStream",
    "ActiveAlarm",
    "AlarmCount",
    "AlarmMsg",
    "Check",
    "CloseEtcArgs",
    "ClosedBy",
    "CommandArgs",
    "CommandName",
    "CommandOutcome",
    "CommandRequest",
    "CommandResult",
    "Compression",
    "EncodedRows",
    "FeeTableVersion",
    "FetchListArgs",
    "HealthCounters",
    "HealthSnapshot",
    "LaneCount",
    "LaneState",
    "LaneStatus",
    "ListChunk",
    "ListFormat",
    "ListKind",
    "ListManifest",
    "ListRequest",
    "ListVersions",
    "OpenEtcArgs",
    "OutboxState",
    "PublishHealthArgs",
    "RaiseBarrierArgs",
    "ReconcileAnswer",
    "ReconcileOutcome",
    "ReconcileResult",
    "ReconcileStatus",
    "RefusalReason",
    "ResendFromArgs",
    "SettledBy",
    "ShowMessageArgs",
    "StatusListVersion",
    "TransactionBatch",
    "TransactionBatchOut",
    "TransactionMsg",
    "TransactionOut",
    "TxAck",
    "UplinkMessage",
    "canonical_json",
    "compact_json",
    "outbox_messages",
    "transaction_messages",
    "transaction_payload",
    "transaction_runs",
]
