"""The centre's Ed25519 signing key: generated (``laned centre keygen``) and loaded.

The private key stays with the centre (PEM, PKCS #8, mode 0600); the lane's trust store
gets the public key as base64 of its raw 32 bytes (what
:func:`laned.uplink.commands.load_public_key` reads) under the key id.
"""

from __future__ import annotations

import base64
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from laned.centre.errors import CentreError
from laned.uplink.commands import KEY_ID
from laned.uplink.tls import TlsConfigError, check_private_key_file


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    key_id: str
    private_path: Path
    public_path: Path
    public_b64: str  # base64 of the raw 32-byte public key

    @property
    def config_line(self) -> str:
        """The line a lane's trust store needs (``key_id = "public key"``)."""
        return f'{self.key_id} = "{self.public_b64}"'


def public_b64(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def generate(out_dir: Path | str, key_id: str) -> GeneratedKey:
    """Write ``<key_id>.key`` (0600, never over an existing file) and ``<key_id>.pub``."""
    if not KEY_ID.fullmatch(key_id):
        raise CentreError(f"key id {key_id!r} must match {KEY_ID.pattern} (the contract's KeyId)")
    folder = Path(out_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path, public_path = folder / f"{key_id}.key", folder / f"{key_id}.pub"
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        # O_EXCL: a key in use is never overwritten; 0600 from the first byte on.
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CentreError(f"{private_path} exists: a signing key is never overwritten (choose another key id "
                          "or folder)") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    b64 = public_b64(key.public_key())
    public_path.write_text(b64 + "\n")
    return GeneratedKey(key_id=key_id, private_path=private_path, public_path=public_path, public_b64=b64)


def centre_key_owner() -> str | None:
    """The user the centre runs as: the owner its key files' fix advice names (a laptop has
    no ``laned`` user). None if the uid has no name: the advice is then ``chmod`` alone."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return None


def check_centre_key_file(path: Path | str) -> Path:
    """:func:`~laned.uplink.tls.check_private_key_file` for one of the centre's own keys
    (signing or TLS), its advice naming the user the centre runs as."""
    return check_private_key_file(path, owner=centre_key_owner())


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """The centre's signing key from a PEM file that only its owner can read."""
    path = Path(path)
    try:
        check_centre_key_file(path)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except TlsConfigError as err:
        raise CentreError(str(err)) from None
    except (OSError, ValueError, TypeError) as err:
        raise CentreError(f"signing key {path} cannot be read as an unencrypted PEM private key: {err}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CentreError(f"signing key {path} is a {type(key).__name__.removeprefix('_')}, not Ed25519")
    return key
