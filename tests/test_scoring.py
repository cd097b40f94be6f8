"""The evaluation report: the numbers scikit-learn's classification_report gives, in its layout."""

from pathlib import Path

import pytest

from stream_clf.errors import ConfigError
from stream_clf.tools.evaluation.evaluate import read_dataset
from stream_clf.tools.evaluation.scoring import ClassificationReport, classification_report

TRUTH = ["neg", "neg", "neg", "pos", "pos", "pos", "pos", "mid"]
PREDICTED = ["neg", "neg", "pos", "pos", "pos", "neg", "pos", "neg"]


def test_scores_match_a_hand_count():
    report = classification_report(TRUTH, PREDICTED, ["neg", "mid", "pos"])
    assert (report.accuracy, report.correct, report.total) == (5 / 8, 5, 8)
    neg, mid, pos = report.classes["neg"], report.classes["mid"], report.classes["pos"]
    assert (neg.precision, neg.recall, neg.support) == (2 / 4, 2 / 3, 3)
    assert neg.f1 == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert (mid.precision, mid.recall, mid.f1, mid.support) == (0.0, 0.0, 0.0, 1)
    assert (pos.precision, pos.recall) == (3 / 4, 3 / 4)
    assert report.macro.recall == pytest.approx((2 / 3 + 0 + 3 / 4) / 3)
    assert report.weighted.recall == pytest.approx((3 * 2 / 3 + 0 + 4 * 3 / 4) / 8)


def test_the_layout_is_the_model_cards_one():
    text = classification_report(["neg", "pos", "pos"], ["neg", "pos", "neg"], ["neg", "pos"]).format(digits=2)
    assert text.splitlines() == [
        "              precision    recall  f1-score   support",
        "",
        "         neg       0.50      1.00      0.67         1",
        "         pos       1.00      0.50      0.67         2",
        "",
        "    accuracy                           0.67         3",
        "   macro avg       0.75      0.75      0.67         3",
        "weighted avg       0.83      0.67      0.67         3",
    ]


def test_a_report_survives_json():
    report = classification_report(TRUTH, PREDICTED, ["neg", "mid", "pos"])
    assert ClassificationReport.from_dict(report.as_dict()) == report


def test_csv_and_jsonl_files_are_read_with_chosen_columns_and_label_map(tmp_path: Path):
    (tmp_path / "d.csv").write_text('review,sentiment\n"great, really",1\nawful,0\n')
    dataset = read_dataset(tmp_path / "d.csv", ["review"], "sentiment", {"1": "pos", "0": "neg"})
    assert (dataset.texts, dataset.labels) == (["great, really", "awful"], ["pos", "neg"])
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n')
    assert read_dataset(tmp_path / "d.jsonl").labels == ["x", "y"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.csv", "text,tag\na,b\n", "no column 'label'; its columns are ['tag', 'text']"),
        ("d.jsonl", "{not json\n", "not JSON lines"),
        ("d.txt", "x", "expected a .csv, .tsv or .jsonl file"),
        ("d.csv", "", "no rows"),
    ],
)
def test_unreadable_data_is_one_clear_error(tmp_path: Path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_dataset(tmp_path / name)
