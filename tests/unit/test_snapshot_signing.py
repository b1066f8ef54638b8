"""Ed25519-signed snapshots: key files, key ids, trusted keys pinned per job pattern, rotation,
other-job and unsigned snapshots refused, the production flag; HMAC keys for rotation."""
from __future__ import annotations

import stat

import numpy as np
import pytest

from streamlearn.algorithms.median import MedianModel
from streamlearn.snapshots.format import SnapshotError, decode_snapshot, encode, snapshot_of
from streamlearn.snapshots.signing import (HMAC_KEY_ENV, REQUIRE_ENV, SIGNING_KEY_ENV, TRUSTED_KEYS_ENV,
                                           KeyConfigError, Signer, TrustedKeys, generate_keys, load_public_keys,
                                           require_signer, require_verifier)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in (HMAC_KEY_ENV, SIGNING_KEY_ENV, TRUSTED_KEYS_ENV, REQUIRE_ENV):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def keys(tmp_path):
    """Three key pairs: two of tenant a (old, new), one of tenant b."""
    return {name: generate_keys(tmp_path / name.split("-")[0], name) for name in ("a-old", "a-new", "b-1")}


def _snapshot(job: str = "a-job", version: int = 3):
    return snapshot_of(MedianModel(np.array([7.0]), 1), {"job": job, "version": version})


def test_generate_writes_a_private_key_only_its_owner_reads(keys, tmp_path):
    private, public = keys["a-old"]
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    signer = Signer.from_file(private)
    assert list(load_public_keys(public)) == [signer.key_id] and len(signer.key_id) == 16
    with pytest.raises(KeyConfigError, match="exists"):
        generate_keys(private.parent, "a-old")  # never overwritten


def test_signed_snapshot_names_its_key_and_verifies_against_the_pinned_key(keys):
    signer = Signer.from_file(keys["a-old"][0])
    data = encode(_snapshot(), signer=signer)
    assert f"ed25519:{signer.key_id}:".encode() in data
    trusted = TrustedKeys.parse(f"a-*={keys['a-old'][1]}")
    assert decode_snapshot(data, trusted=trusted, job="a-job").version == 3
    with pytest.raises(SnapshotError, match="belongs to job 'a-job', not 'b-job'"):
        decode_snapshot(data, trusted=trusted, job="b-job")


def test_a_key_pinned_to_another_tenant_does_not_verify(keys):
    """Tenant b's key signs a snapshot claiming job a-job: a-job trusts only a's keys."""
    forged = encode(_snapshot("a-job", 10**12), signer=Signer.from_file(keys["b-1"][0]))
    trusted = TrustedKeys.parse(f"a-*={keys['a-old'][1].parent},b-*={keys['b-1'][1]}")
    with pytest.raises(SnapshotError, match="not trusted for job 'a-job'"):
        decode_snapshot(forged, trusted=trusted, job="a-job")
    for unsigned in (encode(_snapshot(), key=None), encode(_snapshot(), key="shared-secret")):
        with pytest.raises(SnapshotError, match="unsigned|not Ed25519-signed"):
            decode_snapshot(unsigned, trusted=trusted, key="shared-secret")


def test_rotation_both_keys_verify_during_the_overlap_then_only_the_new_one(keys):
    old = encode(_snapshot(version=1), signer=Signer.from_file(keys["a-old"][0]))
    new = encode(_snapshot(version=2), signer=Signer.from_file(keys["a-new"][0]))
    overlap = TrustedKeys.parse(str(keys["a-old"][1].parent))  # the directory: both *.pub
    assert [decode_snapshot(d, trusted=overlap).version for d in (old, new)] == [1, 2]
    retired = TrustedKeys.parse(f"a-job={keys['a-new'][1]}")
    assert decode_snapshot(new, trusted=retired).version == 2
    with pytest.raises(SnapshotError, match="not trusted"):
        decode_snapshot(old, trusted=retired)


def test_tampered_signed_snapshot_and_a_swapped_signature_are_refused(keys):
    signer = Signer.from_file(keys["a-old"][0])
    trusted = TrustedKeys.parse(str(keys["a-old"][1]))
    good = encode(_snapshot(version=1), signer=signer)
    other = encode(_snapshot(version=2), signer=signer)
    size = len("ed25519:") + 16 + 1 + 88  # key id, base64 of 64 bytes

    def signature(data: bytes) -> bytes:
        return data[data.index(b"ed25519:"):data.index(b"ed25519:") + size]
    good_sig, other_sig = signature(good), signature(other)
    assert good_sig != other_sig and good_sig.startswith(other_sig[:25])
    with pytest.raises(SnapshotError, match="bad signature"):  # a valid signature, of another snapshot
        decode_snapshot(good.replace(good_sig, other_sig), trusted=trusted)


def test_environment_signs_and_verifies(keys, monkeypatch):
    monkeypatch.setenv(SIGNING_KEY_ENV, str(keys["a-new"][0]))
    monkeypatch.setenv(TRUSTED_KEYS_ENV, f"a-*={keys['a-new'][1]}, b-*={keys['b-1'][1]}")
    data = encode(_snapshot())
    assert decode_snapshot(data, job="a-job").version == 3
    monkeypatch.setenv(TRUSTED_KEYS_ENV, f"a-*={keys['b-1'][1]}")
    with pytest.raises(SnapshotError, match="not trusted"):
        decode_snapshot(data)


def test_hmac_keys_rotate_the_first_signs_any_verifies(monkeypatch):
    monkeypatch.setenv(HMAC_KEY_ENV, "new-key,old-key")
    signed_new = encode(_snapshot())
    assert decode_snapshot(signed_new, key=["new-key"]).version == 3
    signed_old = encode(_snapshot(), key="old-key")
    assert decode_snapshot(signed_old).version == 3  # both keys of the environment verify
    assert decode_snapshot(signed_old, key=["old-key", "new-key"]).version == 3
    monkeypatch.setenv(HMAC_KEY_ENV, "new-key")  # the old key retired
    with pytest.raises(SnapshotError, match="bad signature"):
        decode_snapshot(signed_old)


def test_required_signing_refuses_to_start_without_a_key(keys, monkeypatch):
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(KeyConfigError, match="no key to sign"):
        require_signer()
    with pytest.raises(KeyConfigError, match="no key verifies job 'a-job'"):
        require_verifier("a-job")
    unsigned = encode(_snapshot(), key=None)
    with pytest.raises(SnapshotError, match="signatures are required"):
        decode_snapshot(unsigned)
    monkeypatch.setenv(SIGNING_KEY_ENV, str(keys["a-old"][0]))
    monkeypatch.setenv(TRUSTED_KEYS_ENV, f"b-*={keys['b-1'][1]}")
    require_signer()
    require_verifier("b-job")
    with pytest.raises(KeyConfigError, match="a-job"):
        require_verifier("a-job")  # b's key is pinned to b's jobs only


def test_unreadable_or_wrong_key_files_are_one_clear_error(tmp_path, keys, monkeypatch):
    monkeypatch.setenv(SIGNING_KEY_ENV, str(tmp_path / "missing.key"))
    with pytest.raises(KeyConfigError, match="cannot read the signing key"):
        require_signer()
    monkeypatch.setenv(SIGNING_KEY_ENV, str(keys["a-old"][1]))  # a public key where the private belongs
    with pytest.raises(KeyConfigError, match="not an unencrypted PEM private key"):
        require_signer()
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeyConfigError, match="holds no"):
        TrustedKeys.parse(f"a-*={tmp_path / 'empty'}")


def test_a_streamed_version_may_not_jump_far_past_the_current_one_without_the_store():
    from streamlearn.snapshots.verified import MAX_VERSION_STEP, check_streamed_version

    near, far = _snapshot(version=5 + MAX_VERSION_STEP), _snapshot(version=10**12)
    assert check_streamed_version(near, b"", current=5, store=None) == 5 + MAX_VERSION_STEP
    with pytest.raises(SnapshotError, match="jumps more than"):
        check_streamed_version(far, b"", current=5, store=None)
    with pytest.raises(SnapshotError, match="positive int version"):
        check_streamed_version(_snapshot(version=0), b"", current=None, store=None)
