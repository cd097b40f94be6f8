"""Bundles out to Spark NLP: the folder its ``*ForSequenceClassification.loadSavedModel`` takes.

::

    BUNDLE/                                    DIR/
      model.onnx  ──── inputs fitted to ───►     model.onnx
      tokenizer.json ── vocabulary as ─────►     assets/vocab.txt            (WordPiece: BERT, DistilBERT)
                                                 assets/vocab.txt, merges.txt (byte-level BPE: RoBERTa)
                                                 assets/spiece.model, ...    (SentencePiece: ALBERT, XLM-R, DeBERTa)
      config.json ───── id2label ──────────►     assets/labels.txt

Each annotator feeds its ONNX model a fixed set of inputs: BERT and ALBERT all three,
DistilBERT, RoBERTa, XLM-R and DeBERTa no ``token_type_ids``. The graph is fitted to that: an input
the model does not read is added unused, and one the annotator does not feed is replaced by zeros
in the graph. (Spark NLP's loader was read for the file names; each annotator was run here.)
A SentencePiece model is copied when the bundle has its ``.model`` file, else rebuilt from the
tokenizer's Unigram pieces and scores. The folder is assembled aside and moved in place only when
complete, so a failure leaves nothing half-written.
"""

import base64
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import orjson
from onnx import helper

from stream_clf.errors import ModelError
from stream_clf.model.bundle import FUSION_MASK, ModelBundle, read_manifest

__all__ = ["ANNOTATORS", "FAIRSEQ_SPECIALS", "Annotator", "annotator_for", "export_for_spark_nlp"]

_TYPES = "token_type_ids"


@dataclass(frozen=True)
class Annotator:
    """A Spark NLP sequence classifier: its class, its tokenizer files, the inputs it feeds."""

    name: str
    vocabulary: str  # wordpiece, bpe or sentencepiece
    feeds_types: bool
    saved_prefix: str  # the model file of a folder Spark NLP saved: PREFIX_onnx
    spm_file: str | None = None  # the SentencePiece model's name in assets/
    spp_prefix: str | None = None  # ... and in a folder Spark NLP saved: PREFIX_spp
    fairseq_ids: bool = False  # ids are SentencePiece's plus one, after fixed <s>, <pad>, </s>, <unk>


_SENTENCEPIECE = "sentencepiece"
ANNOTATORS = {
    "bert": Annotator("BertForSequenceClassification", "wordpiece", True, "bert_classification"),
    "distilbert": Annotator("DistilBertForSequenceClassification", "wordpiece", False, "distilbert_classification"),
    "roberta": Annotator("RoBertaForSequenceClassification", "bpe", False, "roberta_classification"),
    "xlm-roberta": Annotator(
        "XlmRoBertaForSequenceClassification",
        _SENTENCEPIECE,
        False,
        "xlm_roberta_classification",
        "sentencepiece.bpe.model",
        "xlmroberta",
        fairseq_ids=True,
    ),
    "albert": Annotator(
        "AlbertForSequenceClassification", _SENTENCEPIECE, True, "albert_classification", "spiece.model", "albert"
    ),
    "deberta-v2": Annotator(
        "DeBertaForSequenceClassification", _SENTENCEPIECE, False, "deberta_classification", "spm.model", "deberta"
    ),
}


def annotator_for(bundle: Path) -> Annotator:
    """The Spark NLP annotator of a bundle's architecture (``model_type`` in its config.json)."""
    config = orjson.loads((bundle / "config.json").read_bytes())
    model_type = config.get("model_type")
    if model_type not in ANNOTATORS:
        known = ", ".join(sorted(ANNOTATORS))
        raise ModelError(
            f"model bundle '{bundle}': Spark NLP has no sequence classifier stream-clf can hand"
            f" model_type {model_type!r} to; it exports {known}"
        )
    return ANNOTATORS[model_type]


def export_for_spark_nlp(bundle: ModelBundle, out: Path) -> Annotator:
    """Write the folder Spark NLP's ``loadSavedModel`` takes for ``bundle``; return its annotator."""
    annotator = annotator_for(bundle.path)
    manifest = read_manifest(bundle.path)
    if manifest.get("fusion") and manifest.get("fusion_mask") != FUSION_MASK:
        raise ModelError(
            f"model bundle '{bundle.path}' was fused by an earlier stream-clf, with a padding mask that ONNX"
            " Runtime 1.20 or later takes and Spark NLP 5.5's 1.19 refuses: export the checkpoint again"
        )
    tokenizer = orjson.loads(bundle.tokenizer_file.read_bytes())
    with tempfile.TemporaryDirectory(prefix="stream-clf-spark-nlp-", dir=_scratch_parent(out)) as scratch:
        staging = Path(scratch) / "folder"
        assets = staging / "assets"
        assets.mkdir(parents=True)
        _fit_inputs(bundle.model_file, staging / "model.onnx", feeds_types=annotator.feeds_types)
        (assets / "labels.txt").write_text("".join(f"{label}\n" for label in bundle.labels))
        _write_vocabulary(annotator, tokenizer, bundle.path, assets)
        if out.exists():
            shutil.rmtree(out)
        shutil.move(staging, out)
    return annotator


def _scratch_parent(out: Path) -> Path | None:
    return out.parent if out.parent.exists() else None


def _fit_inputs(source: Path, target: Path, *, feeds_types: bool) -> None:
    model = onnx.load(str(source))
    graph = model.graph
    inputs = {value.name: value for value in graph.input}
    if feeds_types and _TYPES not in inputs:
        unused = onnx.ValueInfoProto()
        unused.CopyFrom(inputs["input_ids"])
        unused.name = _TYPES
        graph.input.append(unused)
    elif not feeds_types and _TYPES in inputs:
        # Token types are all 0 for one-segment inputs: input_ids times zero, in their shape and type.
        element = inputs[_TYPES].type.tensor_type.elem_type
        graph.input.remove(inputs[_TYPES])
        zero = helper.make_tensor("stream_clf_zero", element, [], [0])
        graph.initializer.append(zero)
        ids, nodes = "input_ids", []
        if inputs[ids].type.tensor_type.elem_type != element:
            nodes.append(helper.make_node("Cast", [ids], ["stream_clf_ids"], to=element))
            ids = "stream_clf_ids"
        nodes.append(helper.make_node("Mul", [ids, zero.name], [_TYPES]))
        for node in reversed(nodes):
            graph.node.insert(0, node)
    onnx.save(model, str(target))


def _write_vocabulary(annotator: Annotator, tokenizer: dict[str, Any], bundle: Path, assets: Path) -> None:
    model = tokenizer["model"]
    kind = model["type"]
    expected = {"wordpiece": "WordPiece", "bpe": "BPE", "sentencepiece": "Unigram"}[annotator.vocabulary]
    if kind != expected:
        raise ModelError(
            f"model bundle '{bundle}': {annotator.name} reads a {expected} vocabulary, the bundle's tokenizer is {kind}"
        )
    if annotator.vocabulary in ("wordpiece", "bpe"):
        (assets / "vocab.txt").write_text("".join(f"{token}\n" for token in _in_id_order(model["vocab"], bundle)))
    if annotator.vocabulary == "bpe":
        merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in model["merges"]]
        (assets / "merges.txt").write_text("".join(f"{merge}\n" for merge in merges))
    if annotator.vocabulary == "sentencepiece" and annotator.spm_file:
        shipped = next((bundle / name for name in _SPM_NAMES if (bundle / name).is_file()), None)
        data = shipped.read_bytes() if shipped else _sentencepiece_model(tokenizer, annotator, bundle)
        (assets / annotator.spm_file).write_bytes(data)


_SPM_NAMES = ("spiece.model", "sentencepiece.bpe.model", "spm.model")


def _in_id_order(vocabulary: dict[str, int], bundle: Path) -> list[str]:
    ordered = sorted(vocabulary, key=vocabulary.__getitem__)
    if [vocabulary[token] for token in ordered] != list(range(len(ordered))):
        raise ModelError(f"model bundle '{bundle}': the tokenizer's ids are not 0..{len(ordered) - 1} without gaps")
    return ordered


# The ids fairseq's models (XLM-R) give their special tokens, before SentencePiece's pieces plus one.
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


def _sentencepiece_model(tokenizer: dict[str, Any], annotator: Annotator, bundle: Path) -> bytes:
    """A SentencePiece model (protobuf) with the Unigram tokenizer's pieces, scores and normalizer.

    For fairseq's layout (XLM-R) the model holds ``<unk>, <s>, </s>`` and then the pieces from id 4
    on, so that its ids plus one are the tokenizer's, as the annotator computes them.
    """
    from sentencepiece import sentencepiece_model_pb2 as spm

    model = tokenizer["model"]
    vocabulary = model["vocab"]
    unk_id = model.get("unk_id")
    if annotator.fairseq_ids:
        if tuple(piece for piece, _ in vocabulary[:4]) != FAIRSEQ_SPECIALS:
            raise ModelError(
                f"model bundle '{bundle}': {annotator.name} feeds <s>=0, <pad>=1, </s>=2, <unk>=3; the"
                f" tokenizer's first ids are {[piece for piece, _ in vocabulary[:4]]}"
            )
        vocabulary, unk_id = [["<unk>", 0.0], ["<s>", 0.0], ["</s>", 0.0], *vocabulary[4:]], 0
    specials = {token["content"] for token in tokenizer.get("added_tokens", []) if token.get("special")}
    proto = spm.ModelProto()
    piece_type = spm.ModelProto.SentencePiece
    for index, (piece, score) in enumerate(vocabulary):
        entry = proto.pieces.add()
        entry.piece, entry.score = piece, score
        if index == unk_id:
            entry.type = piece_type.UNKNOWN
        elif piece in specials:
            entry.type = piece_type.CONTROL
        else:
            entry.type = piece_type.NORMAL
    proto.trainer_spec.model_type = spm.TrainerSpec.UNIGRAM
    proto.trainer_spec.unk_id = unk_id or 0
    charsmap = _precompiled_charsmap(tokenizer.get("normalizer"))
    proto.normalizer_spec.name = "nmt_nfkc" if charsmap else "identity"
    if charsmap:
        proto.normalizer_spec.precompiled_charsmap = charsmap
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = True
    return proto.SerializeToString()


def _precompiled_charsmap(normalizer: dict[str, Any] | None) -> bytes | None:
    """The precompiled character map of a tokenizer converted from SentencePiece, if it has one."""
    if not normalizer:
        return None
    if normalizer.get("type") == "Precompiled":
        return base64.b64decode(normalizer["precompiled_charsmap"]) if normalizer.get("precompiled_charsmap") else None
    for step in normalizer.get("normalizers", []):
        found = _precompiled_charsmap(step)
        if found:
            return found
    return None
