"""Export of every architecture: parity with PyTorch, int8 agreement, tokenizer behaviour, failures."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import orjson
import pytest

torch = pytest.importorskip("torch", reason="the export tests need the export extra (torch, transformers)")
transformers = pytest.importorskip("transformers")

from stream_clf.errors import ExportError  # noqa: E402
from stream_clf.model.bundle import load_bundle, read_manifest, write_manifest  # noqa: E402
from stream_clf.model.classifier import Classifier  # noqa: E402
from stream_clf.tools.build.export import PARITY_TEXTS, export_checkpoint  # noqa: E402
from stream_clf.tools.build.fusion import FUSED_ARCHITECTURES  # noqa: E402
from tests.checkpoints import ARCHITECTURES, POSITIONS  # noqa: E402

LONG_TEXT = "Researchers unveiled a faster chip that cuts power use in half. " * 40


def _torch_probabilities(checkpoint: Path, texts: list[str], lowercase: bool) -> np.ndarray:
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    rows = []
    for text in texts:
        encoded = tokenizer(
            text.lower() if lowercase else text, truncation=True, max_length=POSITIONS, return_tensors="pt"
        )
        with torch.no_grad():
            rows.append(torch.softmax(model(**encoded).logits, dim=-1)[0].numpy())
    return np.array(rows)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_each_architecture_exports_and_serves_the_same_probabilities_as_pytorch(name, checkpoints, exported):
    bundle = load_bundle(exported[name])
    manifest = read_manifest(exported[name])
    assert manifest["parity"]["max_logit_diff"] < 1e-4
    assert (bundle.labels, bundle.precision, bundle.max_length) == (("neg", "pos"), "fp32", POSITIONS)
    assert bundle.case_sensitive is ARCHITECTURES[name].case_sensitive
    assert manifest["content_hash"] == bundle.version

    texts = [*PARITY_TEXTS, LONG_TEXT]
    served = Classifier(bundle).predict(texts)
    expected = _torch_probabilities(checkpoints[name], texts, lowercase=not bundle.case_sensitive)
    for prediction, probabilities in zip(served, expected, strict=True):
        assert [prediction.scores[label] for label in bundle.labels] == pytest.approx(probabilities, abs=1e-5)
    assert served[-1].truncated
    assert not served[0].truncated


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_int8_bundles_record_their_precision_and_a_true_comparison_with_fp32(name, exported):
    """Every architecture's graph quantizes and serves, and the manifest's comparison with fp32 is what
    the two bundles answer. How far int8 may move labels is a property of trained weights, tested on
    the news model (test_trained_models): these random-weight checkpoints, whose tokenizers train
    differently each session, sometimes sit within int8's noise of a tie on every text."""
    manifest = read_manifest(exported[f"{name}-int8"])
    assert manifest["precision"] == "int8"
    fp32, int8 = Classifier(load_bundle(exported[name])), Classifier(load_bundle(exported[f"{name}-int8"]))
    pairs = [(fp32.predict([text])[0], int8.predict([text])[0]) for text in PARITY_TEXTS]
    agreement = sum(a.label == b.label for a, b in pairs) / len(pairs)
    assert manifest["int8"]["texts"] == len(PARITY_TEXTS)
    assert manifest["int8"]["label_agreement"] == pytest.approx(agreement)
    assert 0 <= manifest["int8"]["max_logit_diff"] < float("inf")
    assert all(0.0 <= b.score <= 1.0 for _, b in pairs)


def _operators(bundle: Path) -> set[str]:
    return {node.op_type for node in onnx.load(bundle / "model.onnx", load_external_data=False).graph.node}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_export_fuses_attention_serving_pytorchs_probabilities_and_int8_still_quantizes_every_projection(
    name, checkpoints, exported
):
    config = orjson.loads((exported[name] / "config.json").read_bytes())
    manifest = read_manifest(exported[name])
    if config["model_type"] not in FUSED_ARCHITECTURES:
        assert manifest["fusion"] is None, "an architecture not measured keeps its graph as exported"
        assert "MultiHeadAttention" not in _operators(exported[name])
        return
    layers = config.get("num_hidden_layers") or config["n_layers"]
    assert manifest["fusion"]["MultiHeadAttention"] == layers, "one fused attention per layer"
    assert manifest["fusion_mask"] == "key_padding", "the mask form ONNX Runtime 1.19 (Spark NLP's) takes"
    graph = onnx.load(exported[name] / "model.onnx", load_external_data=False).graph
    attentions = [node for node in graph.node if node.op_type == "MultiHeadAttention"]
    assert len(attentions) == layers
    assert all(len(node.input) == 5 and node.input[4] for node in attentions), "a key padding mask and no bias"
    # In one batch, so that the shorter texts are padded: the fused mask must hide the padding.
    bundle = load_bundle(exported[name])
    assert bundle.fused
    texts = [*PARITY_TEXTS, LONG_TEXT]
    served = Classifier(bundle).predict(texts)
    expected = _torch_probabilities(checkpoints[name], texts, lowercase=not bundle.case_sensitive)
    for prediction, probabilities in zip(served, expected, strict=True):
        assert [prediction.scores[label] for label in bundle.labels] == pytest.approx(probabilities, abs=1e-5)
    int8 = _operators(exported[f"{name}-int8"])
    assert "MultiHeadAttention" in int8
    assert "MatMulInteger" in int8
    assert "MatMul" not in int8, "every projection is int8"


def test_no_fuse_keeps_the_graph_as_exported(checkpoints, tmp_path):
    finished = subprocess.run(
        [sys.executable, "-m", "stream_clf", "export", str(checkpoints["bert"]), "--out", str(tmp_path / "b"),
         "--no-fuse"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    assert "fused for ONNX Runtime" not in finished.stdout
    assert read_manifest(tmp_path / "b").get("fusion") is None
    assert not load_bundle(tmp_path / "b").fused
    assert "MultiHeadAttention" not in _operators(tmp_path / "b")


def test_a_bundle_fused_with_the_earlier_mask_form_is_refused_for_spark_nlp_in_one_line(exported, tmp_path):
    """Before the key padding mask, fused bundles fed the mask as a bias that ONNX Runtime 1.19 refuses;
    their manifests say fused and name no mask form."""
    earlier = tmp_path / "earlier"
    shutil.copytree(exported["bert"], earlier)
    manifest = read_manifest(earlier)
    del manifest["fusion_mask"]
    write_manifest(earlier, manifest)
    finished = subprocess.run(
        [sys.executable, "-m", "stream_clf", "spark-nlp", "export", "--model", str(earlier),
         "--out", str(tmp_path / "folder")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert finished.returncode == 2
    assert "was fused by an earlier stream-clf" in finished.stderr
    assert "Traceback" not in finished.stderr
    assert not (tmp_path / "folder").exists()


@pytest.mark.parametrize("name", ["bert-uncased", "albert", "minilm"])
def test_uncased_models_see_the_same_tokens_whatever_the_case(name, exported):
    classifier = Classifier(load_bundle(exported[name]))
    text = "The Striker Scored TWICE in Zürich"
    assert (
        classifier.encode([text]).feeds["input_ids"].tolist()
        == classifier.encode([text.lower()]).feeds["input_ids"].tolist()
    )


def test_truncation_keeps_max_length_tokens_with_their_special_tokens(exported):
    classifier = Classifier(load_bundle(exported["roberta"]))
    ids = classifier.encode([LONG_TEXT]).feeds["input_ids"][0]
    assert len(ids) == POSITIONS
    assert (ids[0], ids[-1]) == (0, 2)  # <s> ... </s>, as the checkpoint's tokenizer does


def test_labels_can_be_named_at_export(checkpoints, tmp_path):
    report = export_checkpoint(str(checkpoints["distilbert"]), tmp_path / "b", labels=["negative", "positive"])
    assert load_bundle(report.bundle).labels == ("negative", "positive")
    with pytest.raises(ExportError, match="--labels names 3 labels but"):
        export_checkpoint(str(checkpoints["distilbert"]), tmp_path / "c", labels=["a", "b", "c"])


def test_a_failed_parity_check_exits_non_zero_and_prints_the_worst_difference(checkpoints, tmp_path):
    out = tmp_path / "strict"
    finished = subprocess.run(
        [sys.executable, "-m", "stream_clf", "export", str(checkpoints["bert"]), "--out", str(out), "--tolerance", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 1
    assert "parity check failed: ONNX logits differ from PyTorch's by up to" in finished.stderr
    assert not out.exists(), "a failed export leaves no bundle behind"


def test_export_cli_reports_parity_and_int8(checkpoints, tmp_path):
    command = [sys.executable, "-m", "stream_clf", "export", str(checkpoints["albert"]), "--out", str(tmp_path / "b")]
    finished = subprocess.run(
        [*command, "--quantize", "int8", "--labels", "neg,pos"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    assert "parity with PyTorch: max |logit diff|" in finished.stdout
    assert "case insensitive" in finished.stdout
    assert "labels agree with fp32 on" in finished.stdout


def test_an_unreachable_hub_id_is_one_readable_line(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-m", "stream_clf", "export", "textattack/roberta-base-ag-news", "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)},
    )
    assert finished.returncode == 1
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1, finished.stderr
    assert lines[0].startswith("stream-clf export: error: cannot load 'textattack/roberta-base-ag-news'")
