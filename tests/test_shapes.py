"""The cards' model shapes: random-weight bundles with the real configurations, measured by the bench.

CI builds the smallest shape (DistilBERT-base, 67M parameters; about a minute, then cached) and runs
a short bench on it through the broker: a smoke test that the path works, not a timing test.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from rich.console import Console
from tokenizers import Tokenizer

from stream_clf.model.bundle import load_bundle, read_manifest, write_manifest
from stream_clf.model.catalog import bundle_shape, shape_checkpoint
from stream_clf.model.lanes import WIDE_ROWS, Layout
from stream_clf.model.windows import Truncation
from stream_clf.tools.bench.report import render_summary


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "stream_clf", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=cwd)


def _with_shape_record(bundle: Path, to: Path, record: object) -> Path:
    """A copy of ``bundle`` whose manifest's ``shape`` record is ``record``, as a hand-made bundle may hold."""
    shutil.copytree(bundle, to)
    manifest = read_manifest(to)
    manifest["shape"] = record
    write_manifest(to, manifest)
    return to


@pytest.fixture(scope="session")
def distilbert_base():
    pytest.importorskip("torch", reason="needs the models extra")
    from stream_clf.tools.build.shapes import build_shape

    return build_shape("distilbert-base")


def test_a_shape_has_the_cards_configuration_and_a_real_vocabulary(distilbert_base):
    config = orjson.loads((distilbert_base.bundles[512, "fp32"] / "config.json").read_bytes())
    assert (config["dim"], config["n_layers"], config["n_heads"], config["hidden_dim"]) == (768, 6, 12, 3072)
    assert config["vocab_size"] == 30_522
    assert 66e6 < distilbert_base.parameters < 68e6, "DistilBERT-base with a two-label head"
    tokenizer = Tokenizer.from_file(str(distilbert_base.bundles[512, "fp32"] / "tokenizer.json"))
    assert tokenizer.get_vocab_size() > 25_000, "trained up to (about) the real vocabulary, not a toy one"
    review = "This movie was an absolutely wonderful surprise, and the acting was superb."
    assert len(tokenizer.encode(review).ids) <= 22, "English words are whole tokens, as with the real vocabulary"
    assert shape_checkpoint("distilbert-base").is_dir(), "kept for the naive baseline"


def test_a_shape_comes_as_four_bundles_that_measure_cost_not_accuracy(distilbert_base):
    bundles = {key: load_bundle(path) for key, path in distilbert_base.bundles.items()}
    assert {(key, b.precision, b.max_length) for key, b in bundles.items()} == {
        ((512, "fp32"), "fp32", 512),
        ((512, "int8"), "int8", 512),
        ((256, "fp32"), "fp32", 256),
        ((256, "int8"), "int8", 256),
    }
    assert bundles[256, "int8"].truncation == Truncation.HEAD_TAIL
    # Fused, so the worker runs calls on rows past 256 tokens on every core, the others in a lane per core.
    assert all(b.fused for b in bundles.values())
    assert [Layout.default(bundles[length, "int8"], threads=2).wide_rows for length in (512, 256)] == [WIDE_ROWS, None]
    assert bundles[512, "int8"].truncation == Truncation.HEAD
    manifest = read_manifest(distilbert_base.bundles[512, "fp32"])
    assert "measures cost, not accuracy" in manifest["source"]
    assert manifest["parity"]["max_logit_diff"] <= 1e-3, "exported through the real path, parity checked"
    assert manifest["shape"]["name"] == "distilbert-base"
    assert len({b.version for b in bundles.values()}) == 4


def test_bench_runs_a_shape_and_its_baseline_is_the_same_checkpoint(distilbert_base, kafka_bootstrap, tmp_path):
    report_file, workdir = tmp_path / "bench.json", tmp_path / "workdir"
    workdir.mkdir()
    finished = _cli("bench", "--shape", "distilbert-base", "--shape-length", "256", "--events", "32",
                    "--max-batch", "8", "--baseline-events", "4", "--latency-seconds", "2",
                    "--brokers", kafka_bootstrap, "--json", str(report_file), cwd=workdir)  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert list(workdir.iterdir()) == [], "the bench and its baseline leave nothing where they run"
    report = orjson.loads(report_file.read_bytes())
    assert report["model"]["name"] == "distilbert-base-256-int8"
    assert report["model"]["precision"] == "int8"
    assert report["baseline"]["checkpoint"].startswith("distilbert-base")
    assert report["stream_clf"]["exit_code"] == 0
    assert report["engine"]["texts_per_second"] > 0
    assert report["engine"]["worker_configuration"] == "2 lanes", "256 tokens: the worker's default, a lane per core"
    assert report["stream_clf"]["events_per_second"] > 0
    assert "end_to_end_at_least_95pct_of_engine" in report["targets"], "a base shape's target"
    # --shape all prints one table across the shapes' reports (here the same report twice).
    console = Console(width=160, record=True)
    console.print(render_summary([report, report]))
    summary = console.export_text()
    assert "256 tokens (head+tail), int8" in summary
    assert summary.count("distilbert-base ") == 2
    assert report["latency_bound_seconds"] > 0, "a full batch of 8 was measured"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "--shape", "bert-base", "--model", "news-int8"], "give --model or --shape, not both"),
        (["bench", "--shape-length", "256"], "--shape-length and --precision go with --shape"),
        (["bench", "--shape", "gpt-5"], "invalid choice: 'gpt-5'"),
        (["models", "build", "--shape", "bert-base", "--quick"], "--shape builds a random-weight model"),
    ],
)
def test_a_shape_flag_out_of_place_stops_the_command_in_one_line(args, message):
    finished = _cli(*args)
    assert finished.returncode == 2
    assert message in finished.stderr
    assert "Traceback" not in finished.stderr


@pytest.mark.parametrize(
    ("record", "shape"),
    [
        ({"name": "bert-base", "source": "bert-base-uncased"}, "bert-base"),
        ("bert-base", None),
        ({"name": 12}, None),
        ({"name": "gpt-5"}, None),
        ([{"name": "bert-base"}], None),
        (None, None),
    ],
)
def test_a_manifests_shape_record_counts_only_when_it_names_a_known_shape(tiny_bundle, tmp_path, record, shape):
    bundle = _with_shape_record(tiny_bundle, tmp_path / "bundle", record)
    assert bundle_shape(bundle) == shape
    load_bundle(bundle)  # whatever the record holds, the bundle itself still loads


def test_bench_of_a_shape_whose_checkpoint_is_missing_stops_before_measuring(tiny_bundle, tmp_path):
    bundle = _with_shape_record(tiny_bundle, tmp_path / "bundle", {"name": "bert-base"})
    env = {**os.environ, "STREAM_CLF_CACHE": str(tmp_path / "empty-cache")}
    started = time.monotonic()
    finished = _cli("bench", "--model", str(bundle), "--brokers", "127.0.0.1:1", env=env)
    assert finished.returncode == 2, finished.stderr[-2000:]
    assert "run `stream-clf models build --shape bert-base`, or bench with --no-baseline" in finished.stderr
    assert "Traceback" not in finished.stderr
    assert time.monotonic() - started < 60, "refused before any measurement"
