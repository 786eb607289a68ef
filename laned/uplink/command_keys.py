"""The centre's public keys the lane trusts, and the ledger of executed commands.

Part of :mod:`laned.uplink.commands` (which re-exports every name here): the trust store
(:class:`CentreKeys`, built from ``[uplink]`` of laned.toml with :func:`load_public_key`)
and what verifying a command reads of the past (:class:`CommandLedger`; the journal
implements it, :class:`MemoryLedger` is the in-memory one for tests). Sans-IO.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from typing import Final, Protocol, runtime_checkable

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

KEY_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # the contract's KeyId
_HEX_KEY: Final = re.compile(r"[0-9a-fA-F]{64}")


# -- keys ---------------------------------------------------------------------------------------


class CommandKeyError(ValueError):
    """A centre key (or its id) that cannot be trusted as given; names the key id."""

    def __init__(self, key_id: str, reason: str) -> None:
        super().__init__(f"centre key {key_id!r}: {reason}")
        self.key_id, self.reason = key_id, reason


def load_public_key(key_id: str, text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo) or the raw 32 bytes in base64."""
    if not isinstance(text, str) or not text.strip():
        raise CommandKeyError(key_id, "no key text (expected PEM or the raw 32-byte key in base64)")
    text = text.strip()
    if text.startswith("-----BEGIN"):
        first = text.splitlines()[0]
        if "PRIVATE" in first:
            raise CommandKeyError(key_id, "this is a private key; the lane must hold only the centre's public key")
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as err:
            raise CommandKeyError(key_id, f"not a PEM public key ({err})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise CommandKeyError(key_id, f"a {type(key).__name__.removeprefix('_')} key, not Ed25519")
        return key
    if _HEX_KEY.fullmatch(text):
        raise CommandKeyError(key_id, "looks like hex; give the raw 32-byte key in base64, or PEM")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CommandKeyError(key_id, "neither PEM nor base64 (expected the raw 32-byte Ed25519 key in base64)") \
            from None
    if len(raw) != 32:
        raise CommandKeyError(key_id, f"{len(raw)} bytes in base64; an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


class CentreKeys(Mapping[str, Ed25519PublicKey]):
    """The centre's Ed25519 public keys the lane trusts, by key id (the trust store).

    Built from ``[uplink] command_keys`` (else ``centre_keys``) of laned.toml with :meth:`from_texts`; more
    than one key lets the centre roll its key over. An empty store refuses every command.
    """

    def __init__(self, keys: Mapping[str, Ed25519PublicKey] | None = None) -> None:
        checked: dict[str, Ed25519PublicKey] = {}
        for key_id, key in (keys or {}).items():
            if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
                raise CommandKeyError(str(key_id), f"the key id must match {KEY_ID.pattern}")
            if not isinstance(key, Ed25519PublicKey):
                raise CommandKeyError(key_id, f"a {type(key).__name__}, not an Ed25519 public key")
            checked[key_id] = key
        self._keys: Mapping[str, Ed25519PublicKey] = checked

    @classmethod
    def from_texts(cls, texts: Mapping[str, str]) -> CentreKeys:
        """From key id → PEM text or base64 of the raw 32-byte key; :class:`CommandKeyError` names a bad one."""
        keys: dict[str, Ed25519PublicKey] = {}
        for key_id, text in texts.items():
            if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
                raise CommandKeyError(str(key_id), f"the key id must match {KEY_ID.pattern}")
            keys[key_id] = load_public_key(key_id, text)
        return cls(keys)

    def __getitem__(self, key_id: str) -> Ed25519PublicKey:
        return self._keys[key_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"CentreKeys({sorted(self._keys)})"


# -- the ledger -----------------------------------------------------------------------------------


@runtime_checkable
class CommandLedger(Protocol):
    """What the lane remembers of the commands it executed (the journal implements it).

    The journal-backed ledger comes with the journal's command table (issue 10): it records
    a command's id and seq in the same SQLite transaction as the action's own journal record,
    so a crash leaves either both or neither. :class:`MemoryLedger` is the in-memory one for
    tests. The seq check alone already keeps a command from running twice (a redelivered
    command's seq is never above the highest); the id set lets a redelivery get its original
    answer (:class:`Replay`) instead of a refusal.
    """

    def executed(self, command_id: str) -> bool:
        """Whether the command with this id was executed."""
        ...

    def highest_seq(self) -> int | None:
        """The highest seq of an executed command; None before the first."""
        ...


class MemoryLedger:
    """An in-memory :class:`CommandLedger` (tests, the reference centre's fake lane)."""

    def __init__(self, executed: Mapping[str, int] | None = None) -> None:
        self._seqs: dict[str, int] = dict(executed or {})

    def executed(self, command_id: str) -> bool:
        return command_id in self._seqs

    def highest_seq(self) -> int | None:
        return max(self._seqs.values(), default=None)

    def record(self, command_id: str, seq: int) -> None:
        """Note an executed command; a second record of one id is a bug (at most once)."""
        if command_id in self._seqs:
            raise ValueError(f"command {command_id} is already recorded as executed")
        self._seqs[command_id] = seq

    def snapshot(self) -> Mapping[str, int]:
        """A copy of what it holds (id → seq), for tests that check it did not change."""
        return dict(self._seqs)
