"""Text in: tokenizer, vocabulary, bag-of-words records, and the vocabulary's home in Redis.

**Tokenizer rule** (the one rule everywhere: ``produce``, ``predict``, the benchmarks): the
text is lower-cased (``str.lower``) and its tokens are the maximal runs of Unicode letters
of length >= 2 (``[^\\W\\d_]{2,}``: digits, underscores, punctuation and whitespace split
words; "don't" gives "don"; "covid19" gives "covid"). Stop words are removed after that.

**Vocabulary**: built from a file's documents: words with document frequency >= ``min_df``,
at most ``max_df`` (a fraction of the documents), not stop words, the ``vocab_size`` most
frequent by document frequency (ties by word). A word's id is its position. Or given as a
file (one word a line, or a JSON list).

**Records**: a document becomes one sparse training record: the ids of its known words and
their counts (float32), ``n_features`` = the vocabulary size. Unknown words are counted (as
``unknown``) but not sent. A document that is empty, not text, or has no known word is not
a record: ``produce`` skips it and reports how many and why; a record that reaches a topic
anyway (another producer) is dead-lettered by the workers (:func:`document_problem`).

The vocabulary is stored in Redis under ``sl:topic:{TOPIC}:vocabulary`` (JSON), so that
``job create`` (the algorithm's ``vocabulary`` parameter), ``topics`` and ``predict`` on raw
text need nothing but the topic's name.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from streamlearn.batch import SparseRows
from streamlearn.streams.files import FileFormatError, json_objects
from streamlearn.streams.producer import Producer
from streamlearn.streams.topics import DEFAULT_RETENTION, ensure_topic, training_topic_config

TOKEN = re.compile(r"[^\W\d_]{2,}")
TOKEN_RULE = "lower-case; tokens = runs of >= 2 Unicode letters ([^\\W\\d_]{2,}); stop words removed"

#: a common English stop-word list (function words, pronouns, auxiliaries, frequent adverbs)
ENGLISH_STOP_WORDS = frozenset("""
a about above after again against all almost alone along already also although always am among an and another
any anybody anyone anything anywhere are aren around as at back be became because become becomes been before
beforehand behind being below beside besides between beyond both but by can cannot could couldn did didn do
does doesn doing don done down during each either else elsewhere enough etc even ever every everyone
everything everywhere except few first for former formerly from further had hadn has hasn have haven having he
hence her here hereafter hereby herein hers herself him himself his how however i ie if in indeed into is isn
it its itself just last latter least less ll made many may me meanwhile might mine more moreover most mostly
much must my myself namely neither never nevertheless next no nobody none nor not nothing now nowhere of off
often on once one only onto or other others otherwise our ours ourselves out over own per perhaps please put
quite rather re really s said same say says see seem seemed seeming seems several she should shouldn since so
some somehow someone something sometime sometimes somewhere still such t than that the their theirs them
themselves then thence there thereafter thereby therefore therein thereupon these they this those though
through throughout thru thus to together too toward towards under until up upon us ve very via was wasn we
well were weren what whatever when whence whenever where whereafter whereas whereby wherein whereupon
wherever whether which while whither who whoever whole whom whose why will with within without won would
wouldn yet you your yours yourself yourselves also get got like make way two three new
""".split())

REDIS_KEY = "sl:topic:{topic}:vocabulary"


class TextError(FileFormatError):
    """Text input that cannot be used: missing text column, bad vocabulary file or options."""


def tokenize(text: str) -> list[str]:
    """The words of ``text`` by the module's rule (stop words not removed)."""
    return TOKEN.findall(text.lower())


def stop_words(spec: str | None) -> frozenset[str]:
    """``english`` (the built-in list), ``none``, or a file of words (one a line)."""
    if spec is None or spec == "none":
        return frozenset()
    if spec == "english":
        return ENGLISH_STOP_WORDS
    path = Path(spec)
    if not path.is_file():
        raise TextError(f"--stop-words must be 'english', 'none' or a file of words; {spec!r} is none of these")
    return frozenset(w for line in path.read_text(encoding="utf-8").splitlines() for w in tokenize(line))


def document_problem(text) -> str | None:
    """Why ``text`` cannot be a document before any vocabulary is consulted, else None."""
    if not isinstance(text, str):
        return f"not text ({type(text).__name__})"
    if not text.strip():
        return "empty document"
    return None


@dataclass
class Vocabulary:
    """Words in id order, with the rule and stop words they were made with."""

    words: list[str]
    stop_words: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise TextError("vocabulary has duplicate words")

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, documents: Iterable[str], vocab_size: int = 20_000, min_df: int = 1, max_df: float = 1.0,
              stop: frozenset[str] = frozenset()) -> "Vocabulary":
        if vocab_size < 1 or min_df < 1 or not 0 < max_df <= 1:
            raise TextError("vocab_size and min_df must be >= 1 and max_df in (0, 1]")
        df: Counter[str] = Counter()
        n_docs = 0
        for doc in documents:
            if document_problem(doc) is None:
                n_docs += 1
                df.update(set(tokenize(doc)) - stop)
        limit = max_df * n_docs
        kept = [(-c, w) for w, c in df.items() if c >= min_df and c <= limit]
        kept.sort()
        if not kept:
            raise TextError("no word passes the vocabulary's filters (min_df, max_df, stop words)")
        return cls([w for _, w in kept[:vocab_size]], stop)

    @classmethod
    def from_file(cls, path, stop: frozenset[str] = frozenset()) -> "Vocabulary":
        path = Path(path)
        if not path.is_file():
            raise TextError(f"{path}: no such vocabulary file")
        text = path.read_text(encoding="utf-8")
        try:
            words = json.loads(text) if text.lstrip().startswith("[") else [w.strip() for w in text.splitlines()]
        except json.JSONDecodeError as exc:
            raise TextError(f"{path}: not a JSON list of words: {exc.msg}") from None
        words = [w for w in words if isinstance(w, str) and w]
        if not words:
            raise TextError(f"{path}: no words")
        return cls(list(dict.fromkeys(w.lower() for w in words)), stop)

    def counts(self, text: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(sorted word ids, their counts as float32, how many tokens were unknown)."""
        ids = [self.index.get(w, -1) for w in tokenize(text) if w not in self.stop_words]
        known = np.array([i for i in ids if i >= 0], dtype=np.int64)
        words, counts = np.unique(known, return_counts=True)
        return words, counts.astype(np.float32), len(ids) - len(known)

    def vectorize(self, texts: Iterable) -> tuple[SparseRows, list[str | None]]:
        """Bag-of-words rows of ``texts`` and, per text, why it is not a document (None if
        it is one). Rows of non-documents are empty."""
        indptr, indices, values, problems = [0], [], [], []
        for text in texts:
            problem = document_problem(text)
            if problem is None:
                ids, counts, _ = self.counts(text)
                if len(ids) == 0:
                    problem = "no known word"
                else:
                    indices.append(ids)
                    values.append(counts)
            problems.append(problem)
            indptr.append(indptr[-1] + (0 if problem else len(indices[-1])))
        return (SparseRows(np.asarray(indptr, dtype=np.int64),
                           np.concatenate(indices) if indices else np.zeros(0, np.int64),
                           np.concatenate(values) if values else np.zeros(0, np.float32), len(self)), problems)

    def to_json(self) -> str:
        return json.dumps({"words": self.words, "stop_words": sorted(self.stop_words), "rule": TOKEN_RULE})

    @classmethod
    def from_json(cls, text: str | bytes) -> "Vocabulary":
        d = json.loads(text)
        return cls(list(d["words"]), frozenset(d.get("stop_words", ())))

    # -- Redis ------------------------------------------------------------------------------
    def store(self, client, topic: str) -> None:
        client.set(REDIS_KEY.format(topic=topic), self.to_json())

    @classmethod
    def load(cls, client, topic: str) -> "Vocabulary | None":
        raw = client.get(REDIS_KEY.format(topic=topic))
        return None if raw is None else cls.from_json(raw)


def with_topic_vocabulary(client, algorithm_cls, topic: str, params: dict) -> dict:
    """``params`` with the topic's stored vocabulary as the ``vocabulary`` parameter, for an
    algorithm that has one and was given neither a vocabulary nor a ``vocab_size``."""
    if "vocabulary" not in algorithm_cls.param_names() or params.get("vocabulary") or params.get("vocab_size"):
        return params
    vocab = Vocabulary.load(client, topic)
    return params if vocab is None else {**params, "vocabulary": vocab.words}


def read_texts(path, column: str, chunk_rows: int = 4096) -> Iterator[list]:
    """The values of ``column`` of a .csv/.jsonl/.parquet file, in chunks (non-strings kept
    as they are, so that they are reported as "not text")."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if suffix == ".jsonl":
        yield from _jsonl_texts(path, column, chunk_rows)
        return
    if suffix not in (".csv", ".parquet"):
        raise TextError(f"{path}: unknown file type {path.suffix!r}; expected .csv, .jsonl or .parquet")
    import pyarrow as pa

    try:
        if suffix == ".csv":
            from pyarrow import csv

            table = csv.read_csv(path, convert_options=csv.ConvertOptions(column_types={column: pa.string()}))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TextError(f"{path}: cannot read: {exc}") from None
    if column not in table.column_names:
        raise TextError(f"{path}: text column {column!r} not found; columns: {table.column_names}")
    values = table.column(column).to_pylist()
    for start in range(0, len(values), chunk_rows):
        yield values[start:start + chunk_rows]


def _jsonl_texts(path: Path, column: str, chunk_rows: int) -> Iterator[list]:
    chunk: list = []
    for lineno, obj in json_objects(path, TextError):
        if not chunk and column not in obj:
            raise TextError(f"{path}:{lineno}: expected a JSON object with the text column {column!r}")
        chunk.append(obj.get(column))
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class TextReport:
    """What ``produce`` did with a text file."""

    documents: int = 0
    skipped: Counter = field(default_factory=Counter)
    unknown_tokens: int = 0
    vocabulary_size: int = 0

    def lines(self) -> list[str]:
        out = [f"vocabulary: {self.vocabulary_size} words"]
        out += [f"skipped {n} document(s): {reason}" for reason, n in sorted(self.skipped.items())]
        return out


def produce_text(conf, redis_client, topic: str, path, column: str, vocab_size: int = 20_000, min_df: int = 1,
                 max_df: float = 1.0, stop: str = "english", vocab_file=None, partitions: int | None = None,
                 batch_size: int = 64, retention: str | int | None = DEFAULT_RETENTION) -> TextReport:
    """Produce the documents of ``column`` of ``path`` as bag-of-words records to ``topic``
    and store the vocabulary (built from the file unless ``vocab_file`` is given) in Redis."""
    if batch_size < 1:
        raise TextError("--batch-size must be >= 1")
    stops = stop_words(stop)
    if vocab_file is not None:
        vocab = Vocabulary.from_file(vocab_file, stops)
    else:
        vocab = Vocabulary.build((t for chunk in read_texts(path, column) for t in chunk), vocab_size, min_df,
                                 max_df, stops)
    ensure_topic(conf, topic, partitions or 1, training_topic_config(retention))
    vocab.store(redis_client, topic)
    report = TextReport(vocabulary_size=len(vocab))
    with Producer(conf, batch_size=batch_size) as producer:
        for texts in read_texts(path, column):
            X, problems = vocab.vectorize(texts)
            ok = np.array([p is None for p in problems])
            report.skipped.update(p for p in problems if p is not None)
            if ok.any():
                producer.send_batch(topic, X.take(np.flatnonzero(ok)), batch_size=batch_size)
                report.documents += int(ok.sum())
    return report


#: reasons a bag-of-words record that reached a topic is dead-lettered (see ``bow_problem``)
R_EMPTY_DOCUMENT = "empty document (no word counts)"
R_BAD_COUNT = "word count not a positive integer"


def bow_problem(indptr: np.ndarray, values: np.ndarray) -> str | None:
    """Why the bag-of-words rows of one message (CSR ``indptr`` and stored ``values``) are
    not documents, else None: a row without a word count, or a count that is not a positive
    whole number (negative, fractional, zero). Names the first bad row of a batch message."""
    indptr = np.asarray(indptr)
    empty = np.flatnonzero(np.diff(indptr) == 0)
    v = np.asarray(values)
    bad = np.flatnonzero(~((v > 0) & (v == np.floor(v))))
    if not len(empty) and not len(bad):
        return None
    bad_row = int(np.searchsorted(indptr, bad[0], "right")) - 1 if len(bad) else len(indptr)
    row, reason = (int(empty[0]), R_EMPTY_DOCUMENT) if len(empty) and empty[0] < bad_row else (bad_row, R_BAD_COUNT)
    return reason if len(indptr) == 2 else f"{reason} (row {row})"


__all__ = ["TOKEN_RULE", "ENGLISH_STOP_WORDS", "TextError", "Vocabulary", "tokenize", "stop_words", "read_texts",
           "produce_text", "with_topic_vocabulary", "document_problem", "bow_problem", "TextReport"]
