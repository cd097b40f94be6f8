"""Spark NLP, for real: bundles exported to it, its answers compared, its saved folders imported back.

Spark NLP runs in its own environment (set up in the cache on first use, about a minute; later
sessions find it there), one Spark session for every architecture.
"""

import shutil
import unicodedata
from pathlib import Path

import orjson
import pytest

from stream_clf.cli import main
from stream_clf.model.bundle import load_bundle
from stream_clf.model.classifier import Classifier
from stream_clf.tools.sparknlp.parity import PARITY_TEXTS, Agreement

# The first session on a machine installs Spark NLP's environment (a few minutes); later ones find it cached.
pytestmark = [pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java"), pytest.mark.timeout(1200)]

# Every architecture Spark NLP has a sequence classifier for, as stream-clf exports them.
ARCHITECTURES = ("bert", "bert-uncased", "minilm", "distilbert", "roberta", "xlm-roberta", "albert", "deberta-v2")
# BERT's own pre-tokenizer splits on whitespace and punctuation, which the RegexTokenizer reproduces: the same
# pieces, so the same scores up to float noise, on every text but those with accented letters (Spark NLP's
# WordPiece handles them its own way, cased or not).
SAME_PIECES = ("bert", "bert-uncased", "minilm")
ACCENTED = {i for i, text in enumerate(PARITY_TEXTS) if any(unicodedata.decomposition(c) for c in text if c.isalpha())}


@pytest.fixture(scope="module")
def spark_nlp(exported: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Agreement], Path]:
    """Every architecture classified by stream-clf and by Spark NLP, and saved by Spark NLP."""
    from stream_clf.tools.sparknlp.environment import spark_nlp_environment
    from stream_clf.tools.sparknlp.parity import compare_with_spark_nlp

    saved = tmp_path_factory.mktemp("spark-nlp-saved")
    bundles = {name: exported[name] for name in ARCHITECTURES}
    rows = compare_with_spark_nlp(spark_nlp_environment(quiet=True), bundles, PARITY_TEXTS, save_to=saved)
    for row in rows:
        print(
            f"{row.model:13} {row.tokenizer:8} labels {row.same_labels}/{row.texts}, scores (1e-4)"
            f" {row.same_scores}/{row.texts}, max |score diff| {row.max_score_diff:.4f}"
        )
    return rows, saved


def test_spark_nlp_gives_every_architecture_the_same_labels_with_the_models_pre_tokenizer(
    spark_nlp: tuple[list[Agreement], Path],
) -> None:
    rows, _ = spark_nlp
    by_model = {(row.model, row.tokenizer): row for row in rows}
    assert {model for model, _ in by_model} == set(ARCHITECTURES)
    for name in ARCHITECTURES:
        assert by_model[name, "model"].same_labels == len(PARITY_TEXTS), name
    assert ACCENTED, "the texts hold accented words"
    for name in SAME_PIECES:
        model, default = (unaccented(by_model[name, tokenizer].score_diffs) for tokenizer in ("model", "default"))
        assert max(model) < 1e-4, name
        # Spark NLP's default Tokenizer keeps "can't", "U.S.-based" whole: other pieces, other scores. (Compared on
        # the same unaccented texts: an accented one can dominate both maxima and tie them.)
        assert max(default) > max(model), name


def unaccented(diffs: tuple[float, ...]) -> list[float]:
    """The score differences of the texts without accented letters."""
    return [diff for i, diff in enumerate(diffs) if i not in ACCENTED]


@pytest.mark.parametrize("name", ["bert", "distilbert", "roberta", "xlm-roberta", "albert", "deberta-v2"])
def test_a_folder_spark_nlp_saved_imports_to_a_bundle_that_answers_like_the_original(
    name: str, spark_nlp: tuple[list[Agreement], Path], exported: dict[str, Path], tmp_path: Path
) -> None:
    _, saved = spark_nlp
    out = tmp_path / "imported"
    assert main(["spark-nlp", "import", str(saved / name), "--out", str(out)]) == 0
    imported, original = load_bundle(out), load_bundle(exported[name])
    assert imported.labels == original.labels
    assert imported.case_sensitive == original.case_sensitive
    assert imported.max_length == min(original.max_length, 512)
    manifest = orjson.loads((out / "stream_clf.json").read_bytes())
    assert manifest["spark_nlp"]["annotator"].endswith("ForSequenceClassification")
    assert manifest["spark_nlp"]["maxSentenceLength"] == imported.max_length
    theirs, ours = Classifier(imported).predict(PARITY_TEXTS), Classifier(original).predict(PARITY_TEXTS)
    for new, old in zip(theirs, ours, strict=True):
        assert new.label == old.label
        assert max(abs(new.scores[label] - old.scores[label]) for label in old.scores) < 1e-4


def test_export_writes_the_folder_load_saved_model_takes(exported: dict[str, Path], tmp_path: Path) -> None:
    for name, files in {
        "bert": ["labels.txt", "vocab.txt"],
        "roberta": ["labels.txt", "merges.txt", "vocab.txt"],
        "albert": ["labels.txt", "spiece.model"],
        "xlm-roberta": ["labels.txt", "sentencepiece.bpe.model"],
    }.items():
        out = tmp_path / name
        assert main(["spark-nlp", "export", "--model", str(exported[name]), "--out", str(out)]) == 0
        assert sorted(path.name for path in (out / "assets").iterdir()) == files
        assert (out / "model.onnx").is_file()
        labels = (out / "assets" / "labels.txt").read_text().split()
        assert labels == list(load_bundle(exported[name]).labels)


def _spark_folder(root: Path, params: dict, annotator: str = "BertForSequenceClassification") -> Path:
    folder = root / "saved"
    (folder / "metadata").mkdir(parents=True)
    metadata = {"class": f"com.johnsnowlabs.nlp.annotators.classifier.dl.{annotator}", "paramMap": params}
    (folder / "metadata" / "part-00000").write_bytes(orjson.dumps(metadata))
    return folder


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "absent", "no such directory"),
        (lambda root: root, "no metadata/part-00000"),
        (lambda root: _spark_folder(root, {"engine": "tensorflow"}), "engine 'tensorflow'"),
        (lambda root: _spark_folder(root, {"engine": "onnx"}, "BertEmbeddings"), "annotator 'BertEmbeddings'"),
        (lambda root: _spark_folder(root, {"engine": "onnx"}), "fields/labels is missing"),
    ],
    ids=["missing", "not-spark-nlp", "tensorflow", "not-a-classifier", "missing-part"],
)
def test_import_refuses_what_it_cannot_read_in_one_line_and_writes_nothing(
    make, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    assert main(["spark-nlp", "import", str(make(tmp_path)), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("stream-clf spark-nlp: error:")
    assert message in error
    assert "\n" not in error
    assert not out.exists()


def test_export_refuses_an_architecture_spark_nlp_has_no_classifier_for(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "folder"
    assert main(["spark-nlp", "export", "--model", str(tiny_bundle), "--out", str(out)]) == 2
    assert "Spark NLP has no sequence classifier" in capsys.readouterr().err
    assert not out.exists()
