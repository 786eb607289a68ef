"""The daemon's logging: ``[log] level`` and ``[log] format`` of the config.

``text`` is one line per record for a terminal or the systemd journal::

    2026-11-22 08:15:02,114 WARNING laned.drivers.rsu: rsu: cannot open /dev/laned-rsu: …

``json`` is one JSON object per line for a log shipper: ``time`` (ISO 8601, local time with
its offset, milliseconds), ``level``, ``logger``, ``message``, every field the caller passed
in ``extra=``, and ``exception`` with the traceback when there is one::

    {"time": "2026-11-22T08:15:02.114+08:00", "level": "WARNING", "logger": "laned.drivers.rsu",
     "message": "rsu: cannot open /dev/laned-rsu: …", "device": "rsu"}

What goes into a message (plates and card numbers masked) is the caller's business; this
module only lays the records out.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import sys
from typing import IO, Any, Literal

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord carries; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=_jsonable)


def setup_logging(level: str = "info", fmt: Literal["text", "json"] | str = "text", *,
                  stream: IO[str] | None = None) -> logging.Handler:
    """Send every record at ``level`` or above to ``stream`` (stderr: the systemd journal)
    in ``fmt``. Calling it again replaces what the previous call installed."""
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
    if fmt not in ("text", "json"):
        raise ValueError(f"log format {fmt!r}: expected 'text' or 'json'")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_laned", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler._laned = True  # type: ignore[attr-defined]  # our mark: a later call replaces only its own handler
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    return handler
