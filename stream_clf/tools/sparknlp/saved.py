"""Spark NLP classifiers in to stream-clf: a folder Spark NLP saved becomes a bundle.

What ``write().save()`` (and a model card's unzipped download) holds, as Spark NLP's
``ParamsAndFeaturesWritable`` writes it::

    metadata/part-00000           JSON: the annotator's class, paramMap and defaultParamMap
    fields/labels/part-*          Hadoop SequenceFiles; each value a Java-serialized array of
    fields/vocabulary/part-*        scala.Tuple2: label -> index, token -> id,
    fields/merges/part-*            ((left, right) -> rank) for byte-level BPE
    <prefix>_classification_onnx  a zip holding model.onnx (ONNX engine)
    <prefix>_spp                  the SentencePiece model (ALBERT, XLM-R, DeBERTa)

The tokenizer is rebuilt with transformers' own fast tokenizer class for the architecture, from the
vocabulary, merges or SentencePiece model, so its special tokens and layout are the model's.
Folders with the TensorFlow engine (the cards' 2021 downloads) are refused: Spark NLP's TensorFlow
build is not on Maven Central, so no such folder can be made and tested here.
"""

import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from stream_clf.errors import ModelError
from stream_clf.model.bundle import load_bundle, write_manifest
from stream_clf.tools.sparknlp.folders import ANNOTATORS, FAIRSEQ_SPECIALS, Annotator

__all__ = ["ImportReport", "import_from_spark_nlp", "read_sequence_file"]

_PARAMS = ("caseSensitive", "maxSentenceLength", "activation", "coalesceSentences", "threshold", "multilabel")


@dataclass(frozen=True)
class ImportReport:
    """What a Spark NLP folder held, as the bundle records it."""

    bundle: Path
    annotator: str
    labels: tuple[str, ...]
    case_sensitive: bool
    max_length: int
    activation: str
    spark_nlp: dict[str, Any]


def import_from_spark_nlp(folder: Path, out: Path) -> ImportReport:
    """Write a bundle at ``out`` from a sequence classifier Spark NLP saved at ``folder``."""
    where = f"Spark NLP folder '{folder}'"
    metadata = _metadata(folder, where)
    model_type, annotator = _annotator(metadata, where)
    params = {**metadata.get("defaultParamMap", {}), **metadata.get("paramMap", {})}
    engine = params.get("engine", "tensorflow")
    if engine != "onnx":
        raise ModelError(
            f"{where}: engine {engine!r}; stream-clf imports ONNX-engine folders only (Spark NLP's TensorFlow"
            " build is not on Maven Central, so that path could not be built and tested): load the model in"
            " Spark NLP and save it with the ONNX engine, or export the original checkpoint with stream-clf"
        )
    labels = _in_index_order(_tuples(folder / "fields" / "labels", where), where, "labels")
    case_sensitive = bool(params.get("caseSensitive", True))
    max_length = int(params.get("maxSentenceLength", 128))
    activation = "sigmoid" if params.get("activation") == "sigmoid" or params.get("multilabel") else "softmax"
    spark_nlp = {"annotator": annotator.name, **{name: params[name] for name in _PARAMS if name in params}}
    with tempfile.TemporaryDirectory(prefix="stream-clf-import-", dir=out.parent if out.parent.exists() else None) as s:
        staging = Path(s) / "bundle"
        staging.mkdir()
        _model(folder, annotator, staging / "model.onnx", where)
        pad_token_id = _tokenizer(folder, annotator, case_sensitive, staging, where)
        config = {
            "model_type": model_type,
            "architectures": [annotator.name],
            "id2label": dict(enumerate(labels)),
            "label2id": {label: index for index, label in enumerate(labels)},
            "pad_token_id": pad_token_id,
        }
        if activation == "sigmoid":
            config["problem_type"] = "multi_label_classification"
        (staging / "config.json").write_bytes(orjson.dumps(config, option=orjson.OPT_NON_STR_KEYS))
        manifest = {
            "format": 1,
            "name": out.name,
            "source": str(folder),
            "labels": list(labels),
            "max_length": max_length,
            "case_sensitive": case_sensitive,
            "activation": activation,
            "precision": "fp32",
            "spark_nlp": spark_nlp,
        }
        write_manifest(staging, manifest)
        load_bundle(staging)  # the worker's own checks, before the bundle is put in place
        if out.exists():
            shutil.rmtree(out)
        shutil.move(staging, out)
    return ImportReport(out, annotator.name, labels, case_sensitive, max_length, activation, spark_nlp)


def _metadata(folder: Path, where: str) -> dict[str, Any]:
    if not folder.is_dir():
        raise ModelError(f"{where}: no such directory")
    file = folder / "metadata" / "part-00000"
    if not file.is_file():
        raise ModelError(f"{where}: no metadata/part-00000; is it a model Spark NLP saved (and unzipped)?")
    try:
        return orjson.loads(file.read_bytes())
    except orjson.JSONDecodeError:
        raise ModelError(f"{where}: metadata/part-00000 is not JSON") from None


def _annotator(metadata: dict[str, Any], where: str) -> tuple[str, Annotator]:
    name = str(metadata.get("class", "")).rsplit(".", 1)[-1]
    for model_type, annotator in ANNOTATORS.items():
        if annotator.name == name:
            return model_type, annotator
    known = ", ".join(annotator.name for annotator in ANNOTATORS.values())
    raise ModelError(
        f"{where}: annotator {name or 'unknown'!r} is not a sequence classifier stream-clf reads ({known})"
    )


def _model(folder: Path, annotator: Annotator, target: Path, where: str) -> None:
    archive = folder / f"{annotator.saved_prefix}_onnx"
    if not archive.is_file():
        raise ModelError(f"{where}: {archive.name} is missing (the ONNX model)")
    try:
        with zipfile.ZipFile(archive) as opened, opened.open("model.onnx") as source, target.open("wb") as sink:
            shutil.copyfileobj(source, sink)
    except (zipfile.BadZipFile, KeyError):
        raise ModelError(f"{where}: {archive.name} is not a zip holding model.onnx") from None


def _tokenizer(folder: Path, annotator: Annotator, case_sensitive: bool, staging: Path, where: str) -> int:
    """Write tokenizer.json (and tokenizer_config.json); return the padding token's id."""
    import transformers

    if annotator.vocabulary == "sentencepiece":
        tokenizer = _sentencepiece_tokenizer(folder, annotator, case_sensitive, where)
    else:
        tokens = _in_index_order(_tuples(folder / "fields" / "vocabulary", where), where, "vocabulary")
        vocabulary = {token: index for index, token in enumerate(tokens)}
        if annotator.vocabulary == "wordpiece":
            tokenizer = transformers.BertTokenizerFast(vocab=vocabulary, do_lower_case=not case_sensitive)
        else:
            merges = _in_index_order(_tuples(folder / "fields" / "merges", where), where, "merges")
            tokenizer = transformers.RobertaTokenizerFast(vocab=vocabulary, merges=[tuple(pair) for pair in merges])
    tokenizer.save_pretrained(str(staging))  # tokenizer.json and tokenizer_config.json
    return int(tokenizer.pad_token_id or 0)


def _sentencepiece_tokenizer(folder: Path, annotator: Annotator, case_sensitive: bool, where: str) -> Any:
    """transformers' tokenizer for the architecture, on the pieces and normalizer of the saved model."""
    import transformers
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2

    file = folder / f"{annotator.spp_prefix}_spp"
    if not file.is_file():
        raise ModelError(f"{where}: {file.name} is missing (the SentencePiece model)")
    model = sentencepiece_model_pb2.ModelProto()
    try:
        model.ParseFromString(file.read_bytes())
    except DecodeError:
        raise ModelError(f"{where}: {file.name} is not a SentencePiece model") from None
    pieces = [(piece.piece, piece.score) for piece in model.pieces]
    charsmap = model.normalizer_spec.precompiled_charsmap or None
    if annotator.fairseq_ids:  # <s>, <pad>, </s>, <unk>, then the model's pieces from its fourth on
        vocabulary = [(piece, 0.0) for piece in FAIRSEQ_SPECIALS] + pieces[3:]
        if "<mask>" not in {piece for piece, _ in vocabulary}:
            vocabulary.append(("<mask>", 0.0))
        return transformers.XLMRobertaTokenizerFast(vocab=vocabulary, _spm_precompiled_charsmap=charsmap)
    lowercase = not case_sensitive
    if annotator.name == "AlbertForSequenceClassification":
        return transformers.AlbertTokenizerFast(
            vocab=pieces, do_lower_case=lowercase, _spm_precompiled_charsmap=charsmap
        )
    unk = next((index for index, piece in enumerate(model.pieces) if piece.type == piece.UNKNOWN), 0)
    return transformers.DebertaV2TokenizerFast(vocab=pieces, do_lower_case=lowercase, unk_id=unk)


def _tuples(field: Path, where: str) -> list[tuple[Any, int]]:
    """Every (key, index) pair of a Spark NLP field, over all its part files."""
    import javaobj.v2 as javaobj

    parts = sorted(field.glob("part-*"))
    if not parts:
        raise ModelError(f"{where}: fields/{field.name} is missing")
    pairs = []
    for part in parts:
        for value in read_sequence_file(part, where):
            try:
                array = javaobj.loads(value)
                pairs += [(_plain(_field(item, "_1")), int(_plain(_field(item, "_2")))) for item in array]
            except (ValueError, TypeError, KeyError, struct.error, AttributeError):
                raise ModelError(f"{where}: fields/{field.name}/{part.name} holds no Java array of pairs") from None
    return pairs


def _field(instance: Any, name: str) -> Any:
    for fields in instance.field_data.values():
        for field, value in fields.items():
            if field.name == name:
                return value
    raise KeyError(name)


def _plain(value: Any) -> Any:
    """A Java String, boxed Integer or scala.Tuple2 of them, as Python values."""
    import javaobj.v2 as javaobj

    if isinstance(value, javaobj.beans.JavaString):
        return value.value
    if isinstance(value, javaobj.transformers.JavaPrimitiveClass) and isinstance(value.value, int):
        return value.value
    if isinstance(value, javaobj.beans.JavaInstance):
        return (_plain(_field(value, "_1")), _plain(_field(value, "_2")))
    raise TypeError(f"unexpected Java value {value!r}")


def _in_index_order(pairs: list[tuple[Any, int]], where: str, what: str) -> list[Any]:
    ordered = [key for key, _ in sorted(pairs, key=lambda pair: pair[1])]
    if sorted(index for _, index in pairs) != list(range(len(pairs))):
        raise ModelError(f"{where}: the {what}' indices are not 0..{len(pairs) - 1} without gaps")
    return ordered


def read_sequence_file(path: Path, where: str) -> list[bytes]:
    """The values of an uncompressed Hadoop SequenceFile of NullWritable keys and BytesWritable values."""
    data = path.read_bytes()
    if data[:3] != b"SEQ":
        raise ModelError(f"{where}: {path.name} is not a Hadoop SequenceFile")
    position = 4
    classes = []
    for _ in range(2):  # key and value class names, as Hadoop Text (a one-byte length when short)
        length = data[position]
        classes.append(data[position + 1 : position + 1 + length].decode())
        position += 1 + length
    compressed, block_compressed = data[position], data[position + 1]
    position += 2
    if compressed or block_compressed or classes[1] != "org.apache.hadoop.io.BytesWritable":
        raise ModelError(f"{where}: {path.name} is a compressed or unexpected SequenceFile ({classes[1]})")
    (entries,) = struct.unpack_from(">i", data, position)
    if entries:
        raise ModelError(f"{where}: {path.name} has SequenceFile metadata stream-clf does not read")
    position += 4 + 16  # the sync marker
    values = []
    while position < len(data):
        (record,) = struct.unpack_from(">i", data, position)
        position += 4
        if record == -1:  # a sync marker between records
            position += 16
            continue
        (key,) = struct.unpack_from(">i", data, position)
        (size,) = struct.unpack_from(">i", data, position + 4 + key)
        start = position + 4 + key + 4
        values.append(data[start : start + size])
        position += 4 + record
    return values
