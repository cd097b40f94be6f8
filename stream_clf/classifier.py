"""Tokenize, pad and run a bundle's ONNX sequence classifier; turn logits into labelled scores.

Synchronous and free of Kafka: the worker calls :meth:`Classifier.predict` from an executor thread
(ONNX Runtime and the Rust tokenizer release the GIL), tests and ``eval`` call it directly.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from stream_clf.bundle import ModelBundle
from stream_clf.errors import ModelError

__all__ = ["Classifier", "EncodedBatch", "Prediction"]

_REQUIRED_INPUTS = ("input_ids", "attention_mask")
_KNOWN_INPUTS = (*_REQUIRED_INPUTS, "token_type_ids")
_NUMPY_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
_SCORE_DIGITS = 6


@dataclass(frozen=True, slots=True)
class Prediction:
    """The classifier's answer for one text."""

    label: str
    scores: dict[str, float]
    truncated: bool

    @property
    def score(self) -> float:
        return self.scores[self.label]


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """Token ids for a batch, padded to the batch's own longest member."""

    feeds: dict[str, np.ndarray]
    truncated: list[bool]

    @property
    def shape(self) -> tuple[int, int]:
        rows, columns = self.feeds["input_ids"].shape
        return rows, columns


class Classifier:
    """A bundle's tokenizer and ONNX Runtime session, checked against each other at construction."""

    def __init__(self, bundle: ModelBundle, threads: int = 1) -> None:
        self.bundle = bundle
        self.labels = bundle.labels
        self._session = _open_session(bundle, threads)
        where = f"model bundle '{bundle.path}'"
        inputs = {item.name: item for item in self._session.get_inputs()}
        unknown = sorted(set(inputs) - set(_KNOWN_INPUTS))
        missing = [name for name in _REQUIRED_INPUTS if name not in inputs]
        if unknown or missing:
            raise ModelError(
                f"{where}: model.onnx takes inputs {sorted(inputs)}; expected input_ids, attention_mask"
                " and optionally token_type_ids"
            )
        self._input_types = {name: _NUMPY_TYPES.get(item.type, np.int64) for name, item in inputs.items()}
        outputs = [item.name for item in self._session.get_outputs()]
        self._output = "logits" if "logits" in outputs else outputs[0]
        try:
            self._tokenizer = Tokenizer.from_file(str(bundle.tokenizer_file))
        except Exception as error:  # the Rust tokenizer raises a bare Exception
            raise ModelError(f"{where}: tokenizer.json cannot be loaded ({error})") from None
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=bundle.max_length)
        self._check_output_width(where)

    def encode(self, texts: Sequence[str]) -> EncodedBatch:
        """Tokenize ``texts`` and pad them to the longest of them (never to max_length)."""
        if not self.bundle.case_sensitive:
            texts = [text.lower() for text in texts]
        encodings = self._tokenizer.encode_batch(list(texts))
        width = max(len(encoding.ids) for encoding in encodings)
        ids = np.full((len(encodings), width), self.bundle.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            length = len(encoding.ids)
            ids[row, :length] = encoding.ids
            mask[row, :length] = 1
            types[row, :length] = encoding.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feeds = {name: arrays[name].astype(dtype, copy=False) for name, dtype in self._input_types.items()}
        return EncodedBatch(feeds=feeds, truncated=[bool(encoding.overflowing) for encoding in encodings])

    def logits(self, batch: EncodedBatch) -> np.ndarray:
        """Run the model on an encoded batch: logits of shape [rows, labels]."""
        return self._session.run([self._output], batch.feeds)[0]

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Classify ``texts``, in order."""
        if not texts:
            return []
        batch = self.encode(texts)
        probabilities = self._activate(self.logits(batch).astype(np.float64))
        return [
            Prediction(
                label=self.labels[int(np.argmax(row))],
                scores={label: round(float(p), _SCORE_DIGITS) for label, p in zip(self.labels, row, strict=True)},
                truncated=truncated,
            )
            for row, truncated in zip(probabilities, batch.truncated, strict=True)
        ]

    def _activate(self, logits: np.ndarray) -> np.ndarray:
        if self.bundle.activation == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def _check_output_width(self, where: str) -> None:
        try:
            logits = self.logits(self.encode(["ok"]))
        except Exception as error:  # ONNX Runtime raises its own exception types
            raise ModelError(f"{where}: model.onnx fails on a sample input ({_first_line(error)})") from None
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            raise ModelError(
                f"{where}: model.onnx returns {self._output} of shape {list(logits.shape)} but config.json"
                f" names {len(self.labels)} labels"
            )


def _open_session(bundle: ModelBundle, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ONNX Runtime's own logger writes coloured multi-line errors to stderr; ours reports them.
    options.log_severity_level = 4
    try:
        return ort.InferenceSession(str(bundle.model_file), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ONNX Runtime raises its own exception types
        raise ModelError(f"model bundle '{bundle.path}': model.onnx cannot be loaded ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
