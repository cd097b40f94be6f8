"""Attention fusion for ONNX Runtime, at export by default (``--no-fuse`` keeps the graph as exported).

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
on 32 and 128 tokens +0.5% and +0.4%. Measured again with the key padding mask below, by CPU time
per text (BERT-base int8, two lanes, six alternated rounds): +2% at 256 tokens and +5% at 512, the
fused graph ahead in 11 of 12 rounds; the wall-clock rates of the same session spread too widely to
tell. No architecture was slower, so the four that were measured are fused; any other keeps its
graph as exported.

The rewriter hands ``MultiHeadAttention`` the padding mask as an additive bias broadcast over heads,
which ONNX Runtime refuses before 1.20 ("relative_position_bias dimension 1 should be same as number
of heads"), and Spark NLP 5.5 runs 1.19. So the bias is replaced by the operator's own key padding
mask (the ``attention_mask`` input as int32, one row of 1s and 0s per text), which 1.19 and every
later version take: the bundles run unchanged in Spark NLP, and the graph loses the nodes that built
the bias.

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
# MultiHeadAttention's inputs: query, key, value, bias, key_padding_mask, attention_bias, ...
_KEY_PADDING_MASK = 4
_ATTENTION_BIAS = 5


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
    _mask_by_key_padding(graph)
    optimize(graph)
    ir.save(graph, out)
    operators = Counter(node.op_type for node in graph.graph)
    return {name: operators[name] for name in _FUSED_OPERATORS}


def _mask_by_key_padding(model: ir.Model) -> None:
    """Give each ``MultiHeadAttention`` the padding mask as its key padding mask, not as a bias.

    The bias the rewriter wires in is the attention mask made additive and broadcast over heads; an
    encoder's attention masks nothing else, and the logits check after the rewrite (on feeds with
    padding) catches a graph where that is not so. A graph without an ``attention_mask`` input is
    left as it is.
    """
    mask = next((value for value in model.graph.inputs if value.name == "attention_mask"), None)
    attentions = [node for node in model.graph if node.op_type == "MultiHeadAttention"]
    if mask is None or not attentions:
        return
    cast = ir.node("Cast", [mask], {"to": ir.DataType.INT32}, name="key_padding_mask")
    model.graph.insert_before(model.graph.node(0), cast)
    key_padding = cast.outputs[0]
    for node in attentions:
        node.resize_inputs(max(len(node.inputs), _KEY_PADDING_MASK + 1))
        node.replace_input_with(_KEY_PADDING_MASK, key_padding)
        if len(node.inputs) > _ATTENTION_BIAS:
            node.replace_input_with(_ATTENTION_BIAS, None)
            node.resize_inputs(_ATTENTION_BIAS)
