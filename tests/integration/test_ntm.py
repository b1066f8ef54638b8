"""The topic model on the real stack: text produced with its vocabulary, two workers, bad
bag-of-words records dead-lettered with reasons, snapshot, ``topics`` and ``predict`` on raw text."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from streamlearn.streams.producer import Producer  # noqa: E402
from streamlearn.streams.text import R_BAD_COUNT, R_EMPTY_DOCUMENT, Vocabulary  # noqa: E402
from tests.integration.procs import cli, start_worker, stop_all, wait_status  # noqa: E402
from tests.integration.test_dead_letters import read_dlq  # noqa: E402

pytestmark = pytest.mark.integration

THEMES = {"sport": "match goal team player coach league season score stadium referee",
          "money": "bank market stock price investor trade profit shares economy inflation",
          "space": "rocket orbit planet astronaut launch moon satellite telescope mission galaxy"}


def _documents(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = {k: v.split() for k, v in THEMES.items()}
    names = list(words)
    return [" ".join(rng.choice(words[names[i % 3]], 25)) + " and the" for i in range(n)]


def test_text_to_topics_with_two_workers(stack, redis_client, unique_name, tmp_path):
    import pandas as pd

    topic, job = f"text-{unique_name}", f"ntm-{unique_name}"
    docs = _documents(1200)
    pd.DataFrame({"id": range(1203), "body": docs + ["", "the and of", "   "]}).to_csv(tmp_path / "docs.csv",
                                                                                    index=False)
    res = cli("produce", topic, "--from", str(tmp_path / "docs.csv"), "--text-column", "body", "--partitions", "2",
              "--min-df", "1")
    assert "produced 1200 documents" in res.stdout
    assert "skipped 2 document(s): empty document" in res.stderr and "skipped 1 document(s): no known word" in res.stderr
    vocab = Vocabulary.load(redis_client, topic)
    assert sorted(vocab.words) == sorted(w for v in THEMES.values() for w in v.split())

    # records that reach the topic invalid (another producer): dead-lettered by the workers
    V = len(vocab)
    with Producer(stack.kafka, stack.kafka_conf) as producer:
        producer.send_record(topic, ([], [], V))
        producer.send_record(topic, ([0, 1], [2.0, -1.0], V))
        producer.send_record(topic, ([3], [0.5], V))

    cli("job", "create", job, "--algorithm", "ntm", "--topic", topic, "--param", "num_topics=6",
        "--param", "encoder_layers=[16]", "--param", "learning_rate=0.02", "--param", "mini_batch_size=16")
    procs = [start_worker(job, tmp_path), start_worker(job, tmp_path)]
    status = wait_status(redis_client, job, lambda s: s["state"] == "finished", 300, "the ntm job to finish")
    assert stop_all(procs) == [0, 0]
    assert status["records_applied"] == 1200 and status["records_dead_lettered"] == 3

    dead = read_dlq(stack, f"{topic}.dlq", expected=3)
    assert sorted(d["streamlearn.reason"] for d in dead) == sorted([R_EMPTY_DOCUMENT, R_BAD_COUNT, R_BAD_COUNT])

    topics = json.loads(cli("topics", job, "--top", "5", "--json").stdout)
    assert len(topics) == 6 and all(len(t["words"]) == 5 for t in topics)
    assert len(cli("topics", job).stdout.splitlines()) == 6  # plain form: one line per topic
    # every theme dominates some topic (6 topics for 3 themes: a topic model may split one)
    theme_of = {w: k for k, v in THEMES.items() for w in v.split()}
    topic_theme = [max(set(ts := [theme_of[w] for w in t["words"]]), key=ts.count) for t in topics]
    assert sorted(set(topic_theme)) == sorted(THEMES)

    pd.DataFrame({"body": ["rocket launch to the moon", "stock market profit"]}).to_csv(tmp_path / "q.csv",
                                                                                      index=False)
    out = cli("predict", job, "--from", str(tmp_path / "q.csv"), "--text-column", "body").stdout.splitlines()
    preds = [json.loads(line) for line in out]
    assert len(preds) == 2 and all(len(p["topic_mixture"]) == 6 for p in preds)
    # each text leans to its theme's topics (argmax alone may land on a mixed topic of the six)
    mass = [{k: sum(m for m, th in zip(p["topic_mixture"], topic_theme) if th == k) for k in THEMES} for p in preds]
    assert mass[0]["space"] > mass[1]["space"] and mass[1]["money"] > mass[0]["money"], mass
