"""Text in: the tokenizer rule, vocabularies, bag-of-words rows, and the rule workers apply to them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from streamlearn.batch import SparseRows
from streamlearn.wire.decode import decode_messages
from streamlearn.wire.serde import encode_training_batch, encode_training_record
from streamlearn.streams.text import (ENGLISH_STOP_WORDS, R_BAD_COUNT, R_EMPTY_DOCUMENT, TextError, Vocabulary,
                                      bow_problem, read_texts, stop_words, tokenize)


def test_tokenizer_rule():
    assert tokenize("Don't STOP: covid19 e-mail, naïve café x 42") == ["don", "stop", "covid", "mail", "naïve",
                                                                       "café"]


def test_vocabulary_filters_and_orders_by_document_frequency():
    docs = ["apple banana the", "apple cherry", "apple banana", "durian", 17, "  "]
    v = Vocabulary.build(docs, vocab_size=10, min_df=2, stop=ENGLISH_STOP_WORDS)
    assert v.words == ["apple", "banana"]  # df 3 then 2; cherry/durian below min_df; "the" a stop word
    assert Vocabulary.build(docs, vocab_size=1).words == ["apple"]
    assert "apple" not in Vocabulary.build(docs, max_df=0.5).words  # in 3 of 4 documents
    with pytest.raises(TextError, match="no word"):
        Vocabulary.build(docs, min_df=5)


def test_vectorize_counts_known_words_and_says_why_a_text_is_no_document():
    v = Vocabulary(["apple", "banana"], ENGLISH_STOP_WORDS)
    X, problems = v.vectorize(["Banana apple BANANA kiwi", "", None, "kiwi only", 3.5])
    assert problems == [None, "empty document", "not text (NoneType)", "no known word", "not text (float)"]
    assert X.n_features == 2 and list(np.diff(X.indptr)) == [2, 0, 0, 0, 0]
    assert X.indices.tolist() == [0, 1] and X.values.tolist() == [1.0, 2.0]
    assert v.counts("apple kiwi mango the")[2] == 2  # unknown words counted, stop words not


def test_vocabulary_files_stop_word_files_and_json(tmp_path):
    (tmp_path / "v.txt").write_text("Apple\nbanana\n\napple\n")
    assert Vocabulary.from_file(tmp_path / "v.txt").words == ["apple", "banana"]
    (tmp_path / "v.json").write_text(json.dumps(["x1", "yy"]))
    assert Vocabulary.from_file(tmp_path / "v.json").words == ["x1", "yy"]
    with pytest.raises(TextError):
        Vocabulary.from_file(tmp_path / "missing.txt")
    (tmp_path / "stop.txt").write_text("Foo\nbar baz\n")
    assert stop_words(str(tmp_path / "stop.txt")) == {"foo", "bar", "baz"}
    assert stop_words("none") == frozenset() and "the" in stop_words("english")
    with pytest.raises(TextError):
        stop_words("klingon")
    v = Vocabulary(["a1", "bb"], frozenset({"zz"}))
    assert Vocabulary.from_json(v.to_json()) == v


def test_read_texts_from_every_format(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"id": [1, 2], "body": ["first doc", "second doc"]})
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    df.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    for name in ("t.csv", "t.parquet", "t.jsonl"):
        assert [t for c in read_texts(tmp_path / name, "body") for t in c] == ["first doc", "second doc"]
    with pytest.raises(TextError, match="not found"):
        list(read_texts(tmp_path / "t.csv", "text"))


def test_bow_rule_names_the_problem():
    assert bow_problem(np.array([0, 2]), np.array([1.0, 3.0])) is None
    assert bow_problem(np.array([0, 0]), np.zeros(0)) == R_EMPTY_DOCUMENT
    assert bow_problem(np.array([0, 1]), np.array([-1.0])) == R_BAD_COUNT
    assert bow_problem(np.array([0, 1]), np.array([0.5])) == R_BAD_COUNT
    assert bow_problem(np.array([0, 1, 1, 2]), np.array([1.0, 2.0])) == f"{R_EMPTY_DOCUMENT} (row 1)"


def test_decode_dead_letters_rows_breaking_the_algorithms_rule():
    good = SparseRows(np.array([0, 2, 3]), np.array([0, 4, 1]), np.array([1, 2, 5], np.float32), 10)
    empty_row = SparseRows(np.array([0, 1, 1]), np.array([3]), np.array([1], np.float32), 10)
    msgs = [encode_training_batch(good),
            encode_training_batch(empty_row),
            encode_training_record(indices=[1, 2], values=[1.0, -2.0], n_features=10),
            encode_training_record(indices=[], values=[], n_features=10),
            encode_training_record(indices=[5], values=[2.0], n_features=10),
            encode_training_record(np.array([0, 2, 0, 0, 0, 0, 0, 0, 0, 1.5], np.float32))]
    r = decode_messages(msgs, 10, True, False, row_rule=bow_problem)
    assert [(x.index, x.reason, x.n_records) for x in r.rejected] == [
        (1, f"{R_EMPTY_DOCUMENT} (row 1)", 2), (2, R_BAD_COUNT, 1), (3, R_EMPTY_DOCUMENT, 1), (5, R_BAD_COUNT, 1)]
    assert r.n_records == 3
    assert len(decode_messages(msgs, 10, True, False).rejected) == 0  # no rule: all are valid sparse records
