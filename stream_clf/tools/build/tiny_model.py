"""A tiny random-weight bundle built on the spot, with no torch and no download.

Its tokenizer is a WordPiece tokenizer whose vocabulary is learnt here from a few sentences; its model is an ONNX graph
with BERT's interface (input_ids, attention_mask, token_type_ids -> logits): word, position and
type embeddings, a masked mean, a tanh layer and a linear head. The weights are random, so its
labels mean nothing; it exists to test the pipeline and to run the demo before a trained model is
at hand. Like BERT, it fails on sequences longer than its position table.
"""

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import orjson
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from stream_clf.model.bundle import MANIFEST

__all__ = ["SAMPLE_TEXTS", "build_tiny_bundle"]

SAMPLE_TEXTS: tuple[str, ...] = (
    "A wonderful film with a moving story and brilliant performances.",
    "The plot made no sense and the acting was painfully wooden.",
    "Shares rallied after the central bank held interest rates steady.",
    "The striker scored twice as the home side won the cup final.",
    "Researchers unveiled a faster chip that cuts power use in half.",
    "Parliament passed the budget after a long night of debate.",
    "I would happily watch it again, it was that good.",
    "Two hours of my life I will never get back.",
    "The new phone's battery lasts all week, reviewers say.",
    "Floods forced thousands to leave their homes in the north.",
    "The service was slow, the food was cold and the staff were rude.",
    "An absolute delight from the first scene to the last.",
)
_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_OPSET = 17
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def build_tiny_bundle(
    out: Path,
    *,
    labels: Sequence[str] = ("negative", "positive"),
    lowercase: bool = False,
    max_positions: int = 512,
    max_length: int | None = None,
    hidden: int = 32,
    vocab_size: int = 600,
    seed: int = 0,
    corpus: Sequence[str] = SAMPLE_TEXTS,
) -> Path:
    """Write a tiny bundle to ``out`` and return it.

    ``max_length`` is what the manifest tells the tokenizer (default: ``max_positions``). Setting
    it above ``max_positions`` (and leaving the position count out of config.json, as some
    hand-made exports do) makes a bundle that fails at inference on long texts.
    """
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(corpus, lowercase=lowercase, vocab_size=vocab_size)
    tokenizer.save(str(out / "tokenizer.json"))
    rng = np.random.default_rng(seed)
    graph = _graph(rng, vocab=tokenizer.get_vocab_size(), positions=max_positions, hidden=hidden, labels=len(labels))
    _center_head(graph, tokenizer, corpus, max_positions)
    onnx.save(graph, str(out / "model.onnx"))
    config = {
        "model_type": "stream-clf-tiny",
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
        "pad_token_id": tokenizer.token_to_id("[PAD]"),
        "vocab_size": tokenizer.get_vocab_size(),
    }
    if max_length is None or max_length <= max_positions:
        config["max_position_embeddings"] = max_positions
    (out / "config.json").write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
    manifest = {
        "format": 1,
        "name": "tiny-random",
        "max_length": max_length or max_positions,
        "case_sensitive": not lowercase,
        "activation": "softmax",
        "precision": "fp32",
        "source": "stream_clf.tools.build.tiny_model (random weights: its labels mean nothing)",
    }
    (out / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return out


def _train_tokenizer(corpus: Iterable[str], *, lowercase: bool, vocab_size: int) -> Tokenizer:
    """A BERT-style WordPiece tokenizer whose vocabulary is learnt from ``corpus``, deterministically.

    The vocabulary holds the special tokens, every character seen (alone and as a ``##``
    continuation, so nothing seen maps to [UNK]), then the most frequent words, ties broken
    alphabetically. (The library's WordPiece trainer breaks ties in hash order, so its output,
    and with it the bundle's content hash, would change from run to run.)
    """
    normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in corpus:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    characters = sorted({character for word in words for character in word})
    vocab = [*_SPECIAL_TOKENS, *characters, *(f"##{character}" for character in characters)]
    ranked = sorted((word for word in words if len(word) > 1), key=lambda word: (-words[word], word))
    vocab += ranked[: max(0, vocab_size - len(vocab))]
    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))  # noqa: S106
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tokenizer


def _center_head(graph: onnx.ModelProto, tokenizer: Tokenizer, corpus: Sequence[str], positions: int) -> None:
    """Set the head's bias so that every label's mean logit over ``corpus`` is zero.

    Random weights alone tend to favour one label for every text; centring makes the labels
    vary from text to text, which is what tests of the pipeline need to see.
    """
    encodings = [tokenizer.encode(text) for text in corpus]
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = np.concatenate(
        [
            session.run(
                ["logits"],
                {
                    "input_ids": np.array([encoding.ids[:positions]], np.int64),
                    "attention_mask": np.array([encoding.attention_mask[:positions]], np.int64),
                    "token_type_ids": np.array([encoding.type_ids[:positions]], np.int64),
                },
            )[0]
            for encoding in encodings
        ]
    )
    bias = next(tensor for tensor in graph.graph.initializer if tensor.name == "head_b")
    bias.CopyFrom(numpy_helper.from_array(-logits.mean(axis=0).astype(np.float32), "head_b"))


def _graph(rng: np.random.Generator, *, vocab: int, positions: int, hidden: int, labels: int) -> onnx.ModelProto:
    def weight(name: str, *shape: int, scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    initializers = [
        weight("word", vocab, hidden, scale=1.0),
        weight("position", positions, hidden, scale=0.02),
        weight("token_type", 2, hidden, scale=0.1),
        weight("dense_w", hidden, hidden, scale=1.0 / np.sqrt(hidden)),
        weight("dense_b", hidden, scale=0.1),
        weight("head_w", hidden, labels, scale=4.0 / np.sqrt(hidden)),
        numpy_helper.from_array(np.zeros(labels, np.float32), "head_b"),
        numpy_helper.from_array(np.array(0, np.int64), "zero_scalar"),
        numpy_helper.from_array(np.array(1, np.int64), "one_scalar"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([2], np.int64), "two"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one_float"),
    ]
    node = helper.make_node
    nodes = [
        node("Gather", ["word", "input_ids"], ["word_emb"]),
        node("Gather", ["token_type", "token_type_ids"], ["type_emb"]),
        node("Shape", ["input_ids"], ["shape"]),
        node("Gather", ["shape", "one_scalar"], ["seq_len"]),
        node("Range", ["zero_scalar", "seq_len", "one_scalar"], ["position_ids"]),
        node("Gather", ["position", "position_ids"], ["position_emb"]),
        node("Add", ["word_emb", "type_emb"], ["sum1"]),
        node("Add", ["sum1", "position_emb"], ["embedded"]),
        node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT),
        node("Unsqueeze", ["mask_float", "two"], ["mask3"]),
        node("Mul", ["embedded", "mask3"], ["masked"]),
        node("ReduceSum", ["masked", "one"], ["summed"], keepdims=0),
        node("ReduceSum", ["mask3", "one"], ["count"], keepdims=0),
        node("Max", ["count", "one_float"], ["count_safe"]),
        node("Div", ["summed", "count_safe"], ["pooled"]),
        node("MatMul", ["pooled", "dense_w"], ["dense"]),
        node("Add", ["dense", "dense_b"], ["dense_biased"]),
        node("Tanh", ["dense_biased"], ["hidden"]),
        node("MatMul", ["hidden", "head_w"], ["head"]),
        node("Add", ["head", "head_b"], ["logits"]),
    ]
    ids = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes,
        "stream_clf_tiny",
        [helper.make_tensor_value_info(name, TensorProto.INT64, ids) for name in _INPUTS],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", labels])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
