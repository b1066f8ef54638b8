"""Bad input, property-based: whatever arrives, the answer is a rejection (dead letter with a
reason) or one of the documented error types — never another exception, never a hang, and
an absurd size claim is refused before memory is allocated (measured with tracemalloc).

Decode-level round trips and fixed bad cases live in test_decode.py; this file covers
schema fingerprints, feature values and dimensions as properties, rejection headers,
job names, ``--param`` values (``make_algorithm``/``Algorithm.from_params``) and the CLI's
argument parsing in-process (no broker, no Redis: settings resolution is stubbed).
"""
from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streamlearn import cli
from streamlearn.algorithms import BUILTIN, available, make_algorithm
from streamlearn.algorithms.base import Algorithm, ParamError
from streamlearn.config import ConfigError
from streamlearn.runtime.jobs import JobError, check_name
from streamlearn.wire import serde
from streamlearn.wire.decode import decode_messages, rejection_headers
from tests.avro_bytes import zigzag

FAST = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
D = 3


def decode(values, n_features=D, accepts_sparse=False, needs_label=False):
    res = decode_messages(values, n_features, accepts_sparse, needs_label)
    assert len(res.batch) + res.n_rejected_records >= 0
    return res


# -- schema fingerprints ---------------------------------------------------------------------
@FAST
@given(st.binary(min_size=8, max_size=8), st.binary(max_size=64))
def test_any_fingerprint_is_known_or_rejected_as_unknown(fp, body):
    known = fp in serde.REGISTRY.by_fingerprint
    res = decode([serde.MAGIC + fp + body])
    if not known:
        assert len(res.rejected) == 1 and res.rejected[0].reason.startswith("unknown schema fingerprint")
        assert len(res.batch) == 0


# -- feature values --------------------------------------------------------------------------
special = st.sampled_from([np.nan, np.inf, -np.inf, 3.0e38, -3.0e38, 1e-45, 0.0, -0.0, 1.0])


@FAST
@given(st.integers(1, 12), st.lists(st.tuples(st.integers(0, 11), st.integers(0, D - 1), special), max_size=6),
       st.booleans())
def test_feature_values_accepted_iff_finite(n, cells, as_records):
    X = np.ones((n, D), dtype=np.float32)
    for r, c, v in cells:
        if r < n:
            X[r, c] = v
    values = ([serde.encode_training_record(row) for row in X] if as_records
              else [serde.encode_training_batch(X)])
    res = decode(values)
    finite_rows = np.isfinite(X).all(axis=1)
    if as_records:
        assert len(res.batch) == int(finite_rows.sum())
        assert res.n_rejected_records == int((~finite_rows).sum())
    else:  # a batch message is accepted or rejected as a whole
        assert len(res.batch) == (n if finite_rows.all() else 0)
        assert res.n_rejected_records == (0 if finite_rows.all() else n)
    assert len(res.batch) + res.n_rejected_records == n  # applied + dead-lettered == produced
    if len(res.batch):
        assert np.isfinite(res.batch.dense()).all()
    for r in res.rejected:
        assert "NaN or inf" in r.reason


@FAST
@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True))
def test_labels_and_weights_nonfinite_or_negative_are_rejected(label, weight):
    value = serde.encode_training_record([1.0] * D, label=label, weight=weight)
    res = decode([value], needs_label=True)
    good = math.isfinite(label) and math.isfinite(weight) and weight >= 0
    assert (len(res.batch) == 1) == good
    assert len(res.batch) + res.n_rejected_records == 1


# -- dimensions ------------------------------------------------------------------------------
@FAST
@given(st.integers(0, 40), st.integers(1, 40), st.integers(0, 5))
def test_dimensions_other_than_the_algorithms_are_rejected(d, want, n):
    values = [serde.encode_training_batch(np.zeros((n, d), dtype=np.float32))]
    if d:
        values.append(serde.encode_training_record(np.zeros(d, dtype=np.float32)))
    res = decode(values, n_features=want)
    expected = (n + (1 if d else 0)) if d == want else 0
    assert len(res.batch) == expected
    if len(res.batch):
        assert res.batch.dense().shape[1] == want


@settings(max_examples=60, deadline=2000)
@given(st.integers(2, 10**18), st.integers(1, 10**18), st.sampled_from(["dense", "sparse", "raw"]))
def test_absurd_size_claims_are_rejected_before_allocation(n_rows, n_features, form):
    """A message claiming e.g. 10**9 x 10**9 values is refused without allocating them."""
    assume(n_rows * n_features > 10**7)
    if form == "dense":
        value = serde.encode({"n_rows": n_rows, "n_features": n_features, "dense": b"\x00" * 64}, "training_batch")
    elif form == "sparse":
        value = serde.encode({"n_rows": n_rows, "n_features": n_features, "indptr": b"\x00" * 16,
                              "indices": b"", "values": b""}, "training_batch")
    else:  # a bytes field whose length varint claims n_rows bytes, with 3 bytes behind it
        value = (serde.MAGIC + serde.schema_fingerprint("training_batch") + zigzag(n_rows) + zigzag(min(n_features, 2**62))
                 + b"\x02" + zigzag(n_rows) + b"abc")
    tracemalloc.start()
    try:
        res = decode([value], n_features=D, accepts_sparse=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(res.rejected) == 1 and len(res.batch) == 0
    assert peak < 1 << 20, f"decoding a {len(value)}-byte message peaked at {peak} bytes"


@FAST
@given(st.integers(0, 100), st.text(max_size=300), st.integers(0, 10**12))
def test_rejection_headers_are_bytes_for_any_reason(index, reason, n_records):
    from streamlearn.wire.decode import Rejection

    headers = rejection_headers(Rejection(index, reason, n_records))
    assert headers and all(isinstance(k, str) and isinstance(v, bytes) for k, v in headers)
    assert dict(headers)["streamlearn.reason"].decode("utf-8") == reason


# -- job names ---------------------------------------------------------------------------------
@FAST
@given(st.one_of(st.text(max_size=120), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,110}", fullmatch=True)))
def test_job_names_are_valid_or_a_clear_job_error(name):
    try:
        check_name(name)
    except JobError as exc:
        assert "invalid job name" in str(exc)
        return
    # accepted names are safe as Kafka group ids, Redis hash tags and file names
    assert 1 <= len(name) <= 100 and name.isascii()
    assert not set(name) & set("{}/ \\:*?\"'\n\t\0")


def test_job_name_none_and_empty():
    for bad in ("", None, ".hidden", "-x", "a" * 101, "a{b}", "ä"):
        with pytest.raises(JobError):
            check_name(bad)


# -- algorithm names and --param values --------------------------------------------------------
param_text = st.one_of(
    st.sampled_from(["", "nan", "inf", "-inf", "-1", "0", "1e309", "1e-320", "10000000000000000000000",
                     "true", "no", "[1,2]", "{\"a\": 1}", "[", "null", "  3 ", "0x10", "1_000", "\x00",
                     "[" * 500, "9" * 5000]),
    st.text(max_size=40))


@FAST
@given(st.text(max_size=30), st.dictionaries(st.text(max_size=20), param_text, max_size=3))
def test_unknown_algorithms_and_params_give_param_errors(name, params):
    try:
        algo = make_algorithm(name, params)
    except ParamError as exc:
        assert str(exc)
        return
    assert isinstance(algo, Algorithm) and name in available()


@FAST
@given(st.data())
def test_param_values_from_the_cli_are_converted_or_rejected(data):
    """Every builtin algorithm, every parameter, string values as ``--param k=v`` gives them."""
    name = data.draw(st.sampled_from(BUILTIN), label="algorithm")
    cls = type(make_algorithm(name, _required(name)))
    keys = data.draw(st.lists(st.sampled_from(cls.param_names()), max_size=3, unique=True), label="keys")
    params = dict(_required(name))
    params.update({k: data.draw(param_text, label=k) for k in keys})
    try:
        algo = cls.from_params(params)
    except ParamError as exc:
        assert cls.name in str(exc) or "unknown" in str(exc)
        return
    algo.check_params()  # what was accepted stays valid
    assert set(algo.get_params()) == set(cls.param_names())


def test_deeply_nested_param_value_is_a_param_error():
    with pytest.raises(ParamError):
        make_algorithm("factorization_machines", {"n_features": "[" * 5000})


def _required(name: str) -> dict[str, str]:
    """The minimal parameters an algorithm needs to be constructed at all."""
    for attempt in ({}, {"n_features": "3"}, {"n_features": "3", "predictor_type": "regressor"}, {"dim": "3"},
                    {"n_features": "3", "k": "2"}, {"feature_dim": "3", "num_components": "2"},
                    {"n_features": "3", "num_factors": "2", "predictor_type": "regressor"},
                    {"feature_dim": "3", "k": "2"}, {"n_features": "3", "n_components": "2"}, {"vocab_size": "3"}):
        try:
            make_algorithm(name, attempt)
            return attempt
        except ParamError:
            continue
    raise AssertionError(f"cannot guess the required parameters of {name}: add them here")


# -- the CLI's argument parsing, in-process ------------------------------------------------------
WORDS = ["job", "create", "status", "pause", "resume", "list", "worker", "snapshot", "predict", "models", "produce",
         "stack", "--json", "--algorithm", "median", "nope", "--topic", "t", "--param", "x=1", "=", "a=",
         "--until", "end", "never", "sometimes", "--snapshot-every", "-1", "nan", "--from", "/nonexistent",
         "--version", "abc", "--partitions", "0", "--batch-size", "--from-snapshot", "j@x", "", "é", "-", "--"]


def _no_servers():
    raise ConfigError("no Kafka configured (stubbed in this test)")


@settings(max_examples=200, deadline=3000)
@given(st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=12)), max_size=8))
def test_cli_argument_parsing_never_crashes(argv):
    old = cli._settings
    cli._settings = _no_servers
    try:
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
            code = exc.code
        assert code in (0, 2)
    finally:
        cli._settings = old


@pytest.mark.parametrize("pairs", [["x"], ["=1"], ["--param"]])
def test_bad_param_syntax_is_a_usage_error(pairs):
    with pytest.raises(cli.UsageError):
        cli._parse_params(pairs)


def test_blank_param_name_is_a_usage_error():
    with pytest.raises(cli.UsageError, match="NAME=VALUE"):
        cli._parse_params(["  =v"])


@FAST
@given(st.lists(st.text(max_size=20), max_size=5))
def test_param_pairs_parse_or_usage_error(pairs):
    try:
        parsed = cli._parse_params(pairs)
    except cli.UsageError as exc:
        assert "NAME=VALUE" in str(exc)
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items())


def test_cli_user_errors_exit_2_in_process(capsys):
    old = cli._settings
    cli._settings = _no_servers
    try:
        assert cli.main(["job", "status", "some-job"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no Kafka configured" in err and "Traceback" not in err
        with pytest.raises(SystemExit) as exc:
            cli.main(["job", "create", "j"])  # --algorithm and --topic are required
        assert exc.value.code == 2
        with pytest.raises(SystemExit) as exc:
            cli.main(["job", "create", "j", "--algorithm", "median", "--topic", "t", "--until", "sometimes"])
        assert exc.value.code == 2
    finally:
        cli._settings = old
