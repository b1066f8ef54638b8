"""Who may publish a job's snapshots: Ed25519 key pairs, trusted public keys pinned per job or
tenant, and shared-secret HMAC keys (several at once, for rotation).

Publishers sign with the private key in ``$STREAMLEARN_SIGNING_KEY`` (a file written by
``streamlearn keys generate``, mode 0600), else with the first HMAC key of
``$STREAMLEARN_SNAPSHOT_KEY``. Verifiers (subscribers, ``serve``, ``predict``) trust:

* ``STREAMLEARN_TRUSTED_KEYS``: comma-separated ``[PATTERN=]PATH`` entries. ``PATH`` is a
  public key file or a directory of ``*.pub`` files; ``PATTERN`` (an ``fnmatch`` glob over
  job names, e.g. ``tenant-a-*``) pins those keys to the jobs it matches, no pattern to every
  job. A job with pinned keys accepts only snapshots signed by one of them — any number at
  once, so a new key is added before the old one is retired.
* ``STREAMLEARN_SNAPSHOT_KEY``: comma-separated shared secrets (single-tenant use); any of
  them verifies, the first signs.

Every signature names its key: ``ed25519:<key id>:<base64>`` or ``hmac:<key id>:<hex>``; the
key id is 16 hex digits of a hash of the (public) key, so it says which key to rotate out
without revealing a secret. ``STREAMLEARN_REQUIRE_SIGNED=1`` (production) makes signing and
verification mandatory: a command that would publish or load a snapshot without a key
refuses to start.
"""
from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from streamlearn.errors import UserError

__all__ = ["SIGNING_KEY_ENV", "TRUSTED_KEYS_ENV", "HMAC_KEY_ENV", "REQUIRE_ENV", "KeyConfigError", "Signer",
           "TrustedKeys", "key_id", "generate_keys", "hmac_keys", "require_signer", "require_verifier", "required"]

SIGNING_KEY_ENV = "STREAMLEARN_SIGNING_KEY"
TRUSTED_KEYS_ENV = "STREAMLEARN_TRUSTED_KEYS"
HMAC_KEY_ENV = "STREAMLEARN_SNAPSHOT_KEY"
REQUIRE_ENV = "STREAMLEARN_REQUIRE_SIGNED"

ED25519 = "ed25519"
HMAC = "hmac"
#: what an Ed25519 signature covers besides the snapshot's sha256 (no other protocol's message)
_SIGNED_PREFIX = b"streamlearn.snapshot.ed25519\n"


class KeyConfigError(UserError):
    """A signing or trusted key is missing, unreadable or not a key."""


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _hmac_key_id(key: bytes) -> str:
    return hashlib.sha256(b"streamlearn.hmac.kid\n" + key).hexdigest()[:16]


def generate_keys(directory: Path | str, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (PKCS#8 private key, mode 0600) and ``NAME.pub`` into ``directory``;
    refuses to overwrite either. Returns (private path, public path)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise KeyConfigError(f"{path} exists; choose another --name or directory")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(_read(path, "signing key"), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyConfigError(f"{path} is not an Ed25519 key (`streamlearn keys generate` makes one)")
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(_read(path, "trusted key"))
    except (ValueError, TypeError) as exc:
        raise KeyConfigError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyConfigError(f"{path} is not an Ed25519 public key")
    return key


def load_public_keys(path: Path | str) -> dict[str, Ed25519PublicKey]:
    """The keys of one public key file, or of every ``*.pub`` in a directory, by key id."""
    path = Path(path)
    files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
    keys = {}
    for file in files:
        key = load_public_key(file)
        keys[key_id(key)] = key
    return keys


@dataclass(frozen=True)
class Signer:
    """An Ed25519 private key and its id: signs a snapshot's sha256."""

    private_key: Ed25519PrivateKey
    key_id: str

    @classmethod
    def from_file(cls, path: Path | str) -> "Signer":
        key = load_private_key(path)
        return cls(key, key_id(key.public_key()))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Signer | None":
        path = (os.environ if env is None else env).get(SIGNING_KEY_ENV, "").strip()
        return cls.from_file(path) if path else None

    def sign(self, checksum: str) -> str:
        signature = self.private_key.sign(_SIGNED_PREFIX + checksum.encode("ascii"))
        return f"{ED25519}:{self.key_id}:{base64.b64encode(signature).decode('ascii')}"


@dataclass(frozen=True)
class TrustedKeys:
    """Public keys trusted to sign snapshots, each pinned to the jobs its pattern matches."""

    entries: tuple[tuple[str, dict[str, Ed25519PublicKey]], ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, spec: str) -> "TrustedKeys":
        """``[PATTERN=]PATH[,[PATTERN=]PATH...]`` (see the module docstring)."""
        entries = []
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            pattern, sep, path = item.partition("=")
            if not sep:
                pattern, path = "*", item
            keys = load_public_keys(path.strip())
            if not keys:
                raise KeyConfigError(f"{TRUSTED_KEYS_ENV}: {path.strip()} holds no *.pub key")
            entries.append((pattern.strip() or "*", keys))
        return cls(tuple(entries))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "TrustedKeys":
        return cls.parse((os.environ if env is None else env).get(TRUSTED_KEYS_ENV, ""))

    @classmethod
    def of(cls, *keys: Ed25519PublicKey, pattern: str = "*") -> "TrustedKeys":
        return cls(((pattern, {key_id(k): k for k in keys}),))

    def for_job(self, job: str | None) -> dict[str, Ed25519PublicKey]:
        """The keys trusted for ``job`` (by key id); empty when none is pinned to it."""
        out: dict[str, Ed25519PublicKey] = {}
        for pattern, keys in self.entries:
            if job is not None and fnmatch.fnmatchcase(job, pattern):
                out.update(keys)
        return out


def hmac_keys(value: str | bytes | list | tuple | None) -> tuple[bytes, ...]:
    """Shared secrets from a comma-separated string, or a list of strings/bytes (first signs).
    Bytes are one key as given: a binary secret may hold a comma."""
    if value is None:
        return ()
    if isinstance(value, (bytes, bytearray)):
        return (bytes(value),) if value else ()
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"snapshot key must be bytes, str or a list of them, not {type(value).__name__}")
    keys = []
    for k in value:
        k = k.strip().encode("utf-8") if isinstance(k, str) else k
        if not isinstance(k, (bytes, bytearray)):
            raise TypeError(f"snapshot key must be bytes or str, not {type(k).__name__}")
        if k:
            keys.append(bytes(k))
    return tuple(keys)


def hmac_sign(key: bytes, mac_hex: str) -> str:
    return f"{HMAC}:{_hmac_key_id(key)}:{mac_hex}"


def hmac_signature_of(signature: str) -> str:
    """The hex MAC of an HMAC signature (``hmac:<kid>:<hex>``, or bare hex as older snapshots
    were written)."""
    return signature.rsplit(":", 1)[-1]


def verify_ed25519(signature: str, checksum: str, trusted: dict[str, Ed25519PublicKey], job: str | None) -> None:
    """Raise ``ValueError`` (message for a :class:`SnapshotError`) unless ``signature`` is a
    valid Ed25519 signature of ``checksum`` by one of ``trusted``."""
    scheme, _, rest = signature.partition(":")
    kid, _, encoded = rest.partition(":")
    if scheme != ED25519:
        raise ValueError(f"snapshot of job {job!r} is not Ed25519-signed, but {TRUSTED_KEYS_ENV} pins keys to it")
    key = trusted.get(kid)
    if key is None:
        raise ValueError(f"bad signature: signed by key {kid[:16]!r}, which is not trusted for job {job!r}")
    try:
        key.verify(base64.b64decode(encoded, validate=True), _SIGNED_PREFIX + checksum.encode("ascii"))
    except (InvalidSignature, ValueError):
        raise ValueError(f"bad signature: not a valid signature of key {kid} (forged or tampered)") from None


def verify_hmac(signature: str, macs: list[str]) -> None:
    """Raise ``ValueError`` unless ``signature`` is one of ``macs`` (the hex HMACs of the
    snapshot's canonical bytes under each configured key)."""
    if signature.startswith(f"{ED25519}:"):
        raise ValueError(f"bad signature: signed with Ed25519 key {signature.split(':')[1][:16]!r}, but no "
                         f"trusted public key ({TRUSTED_KEYS_ENV}) is pinned to this job")
    stored = hmac_signature_of(signature)
    if not any(hmac.compare_digest(mac, stored) for mac in macs):
        raise ValueError("bad signature: snapshot was not signed with a configured key (or was tampered)")


def required(env: Mapping[str, str] | None = None) -> bool:
    value = (os.environ if env is None else env).get(REQUIRE_ENV, "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def require_signer(env: Mapping[str, str] | None = None) -> None:
    """With ``STREAMLEARN_REQUIRE_SIGNED``: refuse to start a publisher that has no key."""
    env = os.environ if env is None else env
    if required(env) and not env.get(SIGNING_KEY_ENV, "").strip() and not hmac_keys(env.get(HMAC_KEY_ENV)):
        raise KeyConfigError(f"{REQUIRE_ENV} is set but there is no key to sign snapshots with: set "
                             f"{SIGNING_KEY_ENV}=PATH (streamlearn keys generate) or {HMAC_KEY_ENV}")
    if env.get(SIGNING_KEY_ENV, "").strip():
        Signer.from_env(env)  # an unreadable key is reported now, not at the first snapshot


def require_verifier(job: str, env: Mapping[str, str] | None = None) -> None:
    """With ``STREAMLEARN_REQUIRE_SIGNED``: refuse to start a loader of ``job``'s snapshots
    that has no key to verify them with."""
    env = os.environ if env is None else env
    trusted = TrustedKeys.from_env(env)  # unreadable keys are reported whether or not required
    if required(env) and not trusted.for_job(job) and not hmac_keys(env.get(HMAC_KEY_ENV)):
        raise KeyConfigError(f"{REQUIRE_ENV} is set but no key verifies job {job!r}'s snapshots: set "
                             f"{TRUSTED_KEYS_ENV}=[PATTERN=]PATH (a matching *.pub) or {HMAC_KEY_ENV}")
