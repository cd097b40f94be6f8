"""Attention fusion for ONNX Runtime, at export on request (``--fuse``), where it measured faster.

ONNX Runtime's own optimizer (run when a session loads) fuses SkipLayerNormalization and BiasGelu
in our ``torch.export`` graphs but no attention: the exported attention is not the pattern its
fuser matches. onnxscript's ORT rewriter matches it. Its rewrites are applied here up to
``MultiHeadAttention`` (scaled dot product, softmax and the padding mask in one contrib operator)
and not one step further to the packed ``Attention`` operator: that one holds the Q, K and V
projections in one fp32 weight with a ``qkv_hidden_sizes`` attribute and an additive mask, which
ONNX Runtime's int8 quantizer leaves in fp32. With ``MultiHeadAttention`` every projection stays a
``MatMul`` that int8 quantizes as before.

Measured on the cards' base shapes (int8, two lanes of one thread, batches of 8, medians of three
alternated rounds, 2-vCPU Zen 3, 2026-12-06): BERT-base +15% at 256 tokens and +17% at 512,
DistilBERT-base +7% and +4%, RoBERTa-base +5% at 256, ALBERT-base-v2 +15% at 256; MiniLM-L6 (a BERT)
on 32 and 128 tokens +0.5% and +0.4%. No architecture was slower, so the four that were measured
are fused; any other keeps its graph as exported.

It is asked for, not the default: the fused ``MultiHeadAttention`` takes the padding mask broadcast
over heads, which ONNX Runtime accepts from 1.20 on; Spark NLP 5.5 runs 1.19, and the bundles it is
handed (``spark-nlp export``, the bench's peer) must stay unfused.

A fused graph must give the logits of the graph it replaces (``tolerance``) on the sample feeds;
when it does not, or a rewrite fails, the export keeps the unfused graph and says so.
"""

import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnxscript.optimizer import optimize
from onnxscript.rewriter import rewrite
from onnxscript.rewriter.ort_fusions import _core as ort_fusions

from stream_clf.tools.build.quantization import max_logit_diff, onnx_logits

__all__ = ["FUSED_ARCHITECTURES", "fuse_attention"]

log = logging.getLogger(__name__)

# Hugging Face model types whose attention is fused (measured faster on their base shape).
FUSED_ARCHITECTURES = frozenset({"bert", "distilbert", "roberta", "albert"})
_FUSED_OPERATORS = ("MultiHeadAttention", "SkipLayerNormalization", "BiasGelu")


def fuse_attention(
    model: Path, model_type: str, feeds: Sequence[dict[str, np.ndarray]], tolerance: float = 1e-4
) -> dict[str, int] | None:
    """Fuse ``model`` (an ONNX file, rewritten in place) if its architecture is one that gains.

    Returns how many of each fused operator the graph now holds, or None when it was left as it was:
    another architecture, no attention matched, a rewrite failed, or the fused graph's logits moved
    more than ``tolerance`` from the original's on ``feeds``.
    """
    if model_type not in FUSED_ARCHITECTURES:
        return None
    with tempfile.TemporaryDirectory(prefix="stream-clf-fusion-") as scratch:
        fused = Path(scratch) / "fused.onnx"
        try:
            counts = _rewrite(model, fused)
        except Exception as error:  # onnxscript's rewriter raises its own types; the graph stays as exported
            log.warning("event=fusion_skipped model_type=%s error=%r", model_type, error)
            return None
        if not counts.get("MultiHeadAttention"):
            return None
        moved = max_logit_diff(onnx_logits(model, feeds), onnx_logits(fused, feeds))
        if not moved <= tolerance:
            log.warning("event=fusion_skipped model_type=%s max_logit_diff=%.3g", model_type, moved)
            return None
        shutil.move(fused, model)
    return counts


def _rewrite(source: Path, out: Path) -> dict[str, int]:
    """onnxscript's ORT fusions, the steps of its ``fuse_xformers`` up to MultiHeadAttention."""
    graph = ir.load(source)
    rewrite(graph, [ort_fusions._gemm_to_matmul_add.gemm_to_matmul_add_rule])
    graph = ort_fusions._pre_optimize(graph)
    ort_fusions.fuse_erfgelu(graph)
    ort_fusions.fuse_skip_layer_normalization(graph)
    ort_fusions.fuse_sdpa(graph, apply_shape_inference=True)
    ort_fusions.fuse_mha1(graph)
    ort_fusions.fuse_mha2(graph)
    ort_fusions.fuse_mha_scale(graph)
    ort_fusions.fuse_bias_gelu(graph)
    optimize(graph)
    ir.save(graph, out)
    operators = Counter(node.op_type for node in graph.graph)
    return {name: operators[name] for name in _FUSED_OPERATORS}
