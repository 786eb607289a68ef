"""The sections of laned.toml for the centre link: ``[uplink]`` (docs/uplink.md) and
``[lists]`` (docs/lists.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from laned.config.values import ConfigPath, Model, check_config_path, check_private_key, check_readable_file, key_error


class UplinkSection(Model):
    """The centre link (MQTT 5 over TLS, docs/uplink.md). Absent: the lane works alone and
    its journal keeps every row until a link is configured."""

    host: str = Field(min_length=1)
    port: int = Field(8883, ge=1, le=65535)
    # The CA that issued the broker's certificate (the system CAs are not trusted).
    ca: Annotated[Path, AfterValidator(check_config_path), AfterValidator(check_readable_file)]
    cert: ConfigPath  # the lane's client certificate; its subject CN must be lane.lane_id
    key: Annotated[Path, AfterValidator(check_config_path), AfterValidator(check_private_key)]
    keepalive_s: int = Field(30, ge=5, le=600)  # the contract's server binding says 30
    # Transactions published and not yet acknowledged by the centre (tx/ack) at once. Rows,
    # not messages: 2048 rows in batches of 64 are 32 messages in the broker's queue for the
    # centre, and two of the centre's 500-row commits in flight, so acks keep the window open.
    window: int = Field(2048, ge=1, le=10_000)
    # Rows per message when several are ready at once (a backlog): on tx/batch, each acked
    # by its seq as on tx. 1: every row alone on tx (a centre that does not read tx/batch).
    batch_max: int = Field(64, ge=1, le=256)
    # A row in flight this long without a tx/ack is published again (the centre de-duplicates).
    ack_timeout_s: float = Field(30.0, gt=0, le=3600)
    reconnect_min_s: float = Field(1.0, gt=0, le=600)  # back-off after a failed connection, doubling …
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)  # … up to this (never past it), each with ±20 % jitter
    # centre_link_down is raised once the link has been down this long (short outages are normal).
    link_down_alarm_s: float = Field(120.0, ge=0, le=86_400)
    # Unacknowledged rows the journal is sized for: 7 days x 20,000 transactions. The
    # uplink_backlog_50/80/95 alarms are raised at those percentages of it.
    backlog_capacity: int = Field(140_000, ge=100, le=100_000_000)
    health_interval_s: float = Field(60.0, ge=1, le=3600)  # a health snapshot at least this often
    # How long the broker keeps the lane's session (subscriptions, queued QoS 1 messages)
    # while it is away; the contract's server binding says one day.
    session_expiry_s: int = Field(86_400, ge=0, le=0xFFFF_FFFF)
    # The centre's Ed25519 public keys the lane trusts, by key id (``laned centre keygen``
    # prints the line): they sign the list manifests (docs/lists.md). None: nothing signed
    # by the centre is taken.
    centre_keys: dict[str, str] = Field(default_factory=dict)
    # The keys trusted for signed commands (cmd: close/open ETC, raise the barrier …), in the
    # same form; absent: centre_keys. A site that keeps its command key apart from its list
    # key gives it here. Empty: every command is refused unknown_key.
    command_keys: dict[str, str] | None = None
    # How far a command's issued_at may be ahead of the lane clock (its expires_at has no tolerance).
    command_clock_skew_s: float = Field(30.0, ge=0, le=3600)

    @field_validator("centre_keys", "command_keys")
    @classmethod
    def _centre_keys(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        from laned.uplink.commands import CentreKeys, CommandKeyError

        try:
            CentreKeys.from_texts(value or {})
        except CommandKeyError as err:
            raise ValueError(str(err)) from None
        return value

    @model_validator(mode="after")
    def _backoff(self) -> UplinkSection:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise key_error("reconnect_max_s", f"{self.reconnect_max_s:g} s is below reconnect_min_s = "
                             f"{self.reconnect_min_s:g} s")
        return self


class ListsSection(Model):
    """Status lists and fee tables downloaded from the centre (docs/lists.md)."""

    # A manifest announcing more bytes (as transferred) is refused too_large; a gzip list
    # expanding beyond the second is refused bad_content. A national list is ~800 MB of JSON.
    status_list_max_mb: int = Field(1024, ge=1, le=16_384)
    status_list_max_expanded_mb: int = Field(2048, ge=1, le=32_768)
    fee_table_max_kb: int = Field(4096, ge=1, le=1 << 20)  # transferred and expanded
    chunk_timeout_s: float = Field(30.0, gt=0, le=3600)  # no new chunk this long: list/request the missing
    max_requests: int = Field(5, ge=1, le=100)  # requests without progress before giving up (interrupted)
    clock_skew_s: float = Field(300.0, ge=0, le=86_400)  # a status list's valid_from this far ahead is taken
    on_stale: Literal["alarm", "close_etc"] = "alarm"  # an old or expired status list: alarm only, or close ETC
    fee_table_dir: ConfigPath = Path("/var/lib/laned/fee_tables")  # the fee tables the centre sent
