"""Snapshots in parts: cut, named by a manifest, assembled and verified as a whole; a missing,
altered or foreign part is refused, never loaded."""
from __future__ import annotations

import numpy as np
import pytest

from streamlearn.algorithms.median import MedianModel
from streamlearn.snapshots.format import SnapshotError, decode_snapshot, encode, load_model, snapshot_of
from streamlearn.snapshots.parts import PART_BYTES, WHOLE_BYTES, WHOLE_BYTES_ENV, BadPartSize, Manifest, \
    PartialSnapshot, PartsBuffer, assemble, part_bytes, split, whole_bytes
from streamlearn.snapshots.signing import HMAC_KEY_ENV, SIGNING_KEY_ENV, TRUSTED_KEYS_ENV, Signer, TrustedKeys, \
    generate_keys, load_public_key


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in (HMAC_KEY_ENV, SIGNING_KEY_ENV, TRUSTED_KEYS_ENV, WHOLE_BYTES_ENV):
        monkeypatch.delenv(var, raising=False)


def _signed(tmp_path, version: int, values: np.ndarray) -> tuple[bytes, TrustedKeys]:
    private, public = generate_keys(tmp_path, f"k{version}")
    data = encode(snapshot_of(MedianModel(1.5, len(values)), {"job": "big", "version": version}, {"w": values}),
                  signer=Signer.from_file(private))  # the training state: covered by the signature too
    return data, TrustedKeys.of(load_public_key(public))


def _in_parts(data: bytes, version: int, part_bytes: int = 1000) -> tuple[Manifest, dict[str, bytes]]:
    pieces = split(data, part_bytes)
    keys = [f"big/part/{i}" for i in range(len(pieces))]
    return Manifest.of("big", version, data, pieces, keys), dict(zip(keys, map(bytes, pieces)))  # as fetched


def test_parts_reassemble_into_the_signed_snapshot_they_were_cut_from(tmp_path):
    values = np.arange(2000, dtype=np.float64)
    data, trusted = _signed(tmp_path, 7, values)
    manifest, parts = _in_parts(data, 7)
    assert len(manifest.parts) == -(-len(data) // 1000) > 10
    again = Manifest.from_bytes(manifest.to_bytes())
    assert again == manifest
    whole = assemble(again, parts.get)
    assert whole == data
    snapshot = decode_snapshot(whole, trusted=trusted, job="big", require=True)
    np.testing.assert_array_equal(snapshot.state["w"], values)
    assert load_model(snapshot).median == 1.5


def test_a_missing_part_is_refused_with_its_index(tmp_path):
    data, _ = _signed(tmp_path, 7, np.arange(2000, dtype=np.float64))
    manifest, parts = _in_parts(data, 7)
    del parts[manifest.parts[3][0]]
    with pytest.raises(PartialSnapshot, match=rf"big@7: part 4 of {len(manifest.parts)} .* is missing"):
        assemble(manifest, parts.get)


def test_an_altered_or_foreign_part_is_refused(tmp_path):
    data, _ = _signed(tmp_path, 7, np.arange(2000, dtype=np.float64))
    other, _ = _signed(tmp_path, 8, np.arange(2000, dtype=np.float64) + 1)
    manifest, parts = _in_parts(data, 7)
    key = manifest.parts[5][0]
    parts[key] = parts[key][:-1] + bytes([parts[key][-1] ^ 1])
    with pytest.raises(PartialSnapshot, match="part 6 .* not the part the manifest names"):
        assemble(manifest, parts.get)
    _, foreign = _in_parts(other, 8)  # same keys, another snapshot's bytes
    with pytest.raises(PartialSnapshot, match="not the part the manifest names"):
        assemble(manifest, foreign.get)


def test_a_forged_manifest_over_altered_parts_still_fails_the_signature(tmp_path):
    """The manifest is unauthenticated: one rewritten to match altered parts assembles, and
    the whole snapshot's signature refuses it."""
    data, trusted = _signed(tmp_path, 7, np.arange(2000, dtype=np.float64))
    cut = len(data) // 2
    tampered = data[:cut] + bytes([data[cut] ^ 1]) + data[cut + 1:]
    manifest, parts = _in_parts(tampered, 7)
    with pytest.raises(SnapshotError):
        decode_snapshot(assemble(manifest, parts.get), trusted=trusted, job="big", require=True)


@pytest.mark.parametrize("raw", [
    b"not a manifest",
    b"streamlearn.snapshot.parts.v1\n{",
    b'streamlearn.snapshot.parts.v1\n{"job":"big","version":1,"bytes":5,"sha256":"' + b"0" * 64
    + b'","parts":[["k",4,"' + b"0" * 64 + b'"]]}',  # parts do not add up
    b'streamlearn.snapshot.parts.v1\n{"job":"big","version":1,"bytes":0,"sha256":"' + b"0" * 64 + b'","parts":[]}',
    b'streamlearn.snapshot.parts.v1\n{"job":"big","version":1,"bytes":4,"sha256":"' + b"0" * 64
    + b'","parts":[["k",-4,"' + b"0" * 64 + b'"]]}',
])
def test_malformed_manifests_are_refused(raw):
    with pytest.raises(PartialSnapshot):
        Manifest.from_bytes(raw)


def test_the_buffer_holds_the_newest_version_only_and_refuses_a_gap(tmp_path):
    data, _ = _signed(tmp_path, 7, np.arange(2000, dtype=np.float64))
    manifest, parts = _in_parts(data, 7)
    buffer = PartsBuffer()
    buffer.add(6, manifest.parts[0][0], b"stale")
    for key, piece in parts.items():
        buffer.add(7, key, piece)
    buffer.add(5, "big/part/0", b"older: ignored")
    assert buffer.take(manifest) == data
    with pytest.raises(PartialSnapshot, match="is missing"):
        buffer.take(manifest)  # taken once: its parts are gone
    for key, piece in list(parts.items())[1:]:  # the first part never arrived
        buffer.add(7, key, piece)
    with pytest.raises(PartialSnapshot, match="part 1 of"):
        buffer.take(manifest)


def test_the_message_size_setting_sets_the_whole_limit_and_the_part_size(monkeypatch):
    assert (whole_bytes(), part_bytes()) == (WHOLE_BYTES, PART_BYTES)
    monkeypatch.setenv(WHOLE_BYTES_ENV, "1000000")  # a topic with Kafka's default message size
    assert (whole_bytes(), part_bytes()) == (1_000_000, 1_000_000)
    assert [len(p) for p in split(bytes(2_500_000))] == [1_000_000, 1_000_000, 500_000]
    for bad in ("1e6", "-1", str(1 << 10), str(WHOLE_BYTES + 1)):
        monkeypatch.setenv(WHOLE_BYTES_ENV, bad)
        with pytest.raises(BadPartSize, match=WHOLE_BYTES_ENV):
            whole_bytes()
