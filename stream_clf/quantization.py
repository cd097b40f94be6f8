"""int8 dynamic quantization of a bundle's model, with a report of what it changed.

ONNX Runtime's ``quant_pre_process`` runs first: on a raw export, weights that several nodes share
(ALBERT's one layer, applied N times) are left in fp32 by the quantizer; on the pre-processed graph
they are quantized like everyone else's. Weights become int8 (symmetric), activations are quantized
per batch at run time (uint8), which the VNNI dot-product instructions take directly.
"""

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

__all__ = ["QuantizationReport", "quantize_int8"]


@dataclass(frozen=True)
class QuantizationReport:
    """How far int8 moved the model's answers from fp32 on a sample of texts."""

    max_logit_diff: float
    label_agreement: float
    texts: int


def quantize_int8(model: Path, feeds: Sequence[dict[str, np.ndarray]]) -> QuantizationReport:
    """Replace the fp32 ``model`` with its int8 version; compare the two on ``feeds``."""
    before = _logits(model, feeds)
    with tempfile.TemporaryDirectory(prefix="stream-clf-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quantized = Path(scratch) / "int8.onnx"
        # The quantizer's tooling logs advice and progress on the root logger; keep it quiet.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
            quantize_dynamic(str(prepared), str(quantized), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        after = _logits(quantized, feeds)
        quantized.replace(model)
    agree = [int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(before, after, strict=True)]
    return QuantizationReport(
        max_logit_diff=float(max(np.max(np.abs(a - b)) for a, b in zip(before, after, strict=True))),
        label_agreement=sum(agree) / len(agree),
        texts=len(agree),
    )


def _logits(model: Path, feeds: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return [session.run(["logits"], feed)[0][0] for feed in feeds]
