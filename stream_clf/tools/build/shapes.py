"""The reference cards' model shapes, as random-weight bundles: what serving those models costs.

Spark NLP's cards serve base-size models (BERT-base, DistilBERT-base, RoBERTa-base, ALBERT-base-v2)
at ``maxSentenceLength`` 512. Nothing downloadable here ships their weights, and none is needed to
measure cost: the time a model takes does not depend on its weight values. Each shape is a
checkpoint with the card's source model's exact configuration (layers, widths, heads, vocabulary,
positions), random weights (transformers' own initialisation), and a tokenizer of the real kind
trained here on IMDB reviews up to the real vocabulary size, so a text costs as many tokens.

``build_shape`` exports it through the real export path (parity with PyTorch checked) to fp32 and
int8 bundles at 512 tokens, and derives from each a copy at 256 tokens with head+tail truncation
(the stand-in IMDB model's setting). Their labels mean nothing: they measure cost, not accuracy.
"""

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from stream_clf.model.bundle import load_bundle, read_manifest, write_manifest
from stream_clf.model.catalog import SHAPES, bundle_name, models_dir, shape_checkpoint
from stream_clf.model.windows import Truncation
from stream_clf.tools.build.corpora import load_corpus, split
from stream_clf.tools.build.export import export_module
from stream_clf.tools.build.quantization import SAMPLE_TEXTS, quantize_bundle
from stream_clf.tools.build.tokenizer_kinds import byte_level_bpe, unigram, wordpiece

__all__ = ["ShapeBuild", "build_shape"]

# Bump when a shape's configuration, tokenizer or export changes, so cached builds are rebuilt.
SHAPE_RECIPE = 3  # 3: fused attention (2 was an earlier fused form, with a mask Spark NLP refuses)
LABELS = ("neg", "pos")
SHORT_LENGTH = 256  # the stand-in IMDB model's length, with head+tail truncation
TOKENIZER_TEXTS = 8_000  # IMDB training reviews the tokenizers learn from (never the bench's held-out ones)
Progress = Callable[[str, int | None], Callable[[int], None]]


@dataclass(frozen=True)
class _Shape:
    """One card's source model: its class, configuration and tokenizer kind."""

    source: str
    model_class: type[transformers.PreTrainedModel]
    config: Callable[[], transformers.PretrainedConfig]
    tokenizer: Callable[[list[str]], transformers.PreTrainedTokenizerFast]


def _uncased_wordpiece(texts: list[str]) -> transformers.PreTrainedTokenizerFast:
    core = wordpiece(texts, 30_522, lowercase=True)
    return transformers.BertTokenizerFast(tokenizer_object=core, do_lower_case=True)


def _roberta_bpe(texts: list[str]) -> transformers.PreTrainedTokenizerFast:
    return transformers.RobertaTokenizerFast(tokenizer_object=byte_level_bpe(texts, 50_265))


def _albert_unigram(texts: list[str]) -> transformers.PreTrainedTokenizerFast:
    core = unigram(
        texts, 30_000, lowercase=True, special=["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"],
        template=("[CLS]", "[SEP]"), unk="<unk>",
    )  # fmt: skip
    return transformers.AlbertTokenizerFast(tokenizer_object=core, do_lower_case=True)


_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
_SHAPES: dict[str, _Shape] = {
    "bert-base": _Shape(
        "bert-base-uncased (textattack/bert-base-uncased-imdb)",
        transformers.BertForSequenceClassification,
        lambda: transformers.BertConfig(vocab_size=30_522, max_position_embeddings=512, **_BASE),
        _uncased_wordpiece,
    ),
    "distilbert-base": _Shape(
        "distilbert-base-uncased (lvwerra/distilbert-imdb)",
        transformers.DistilBertForSequenceClassification,
        lambda: transformers.DistilBertConfig(
            vocab_size=30_522, max_position_embeddings=512, dim=768, n_layers=6, n_heads=12, hidden_dim=3072
        ),
        _uncased_wordpiece,
    ),
    "roberta-base": _Shape(
        "roberta-base (textattack/roberta-base-imdb, textattack/roberta-base-ag-news)",
        transformers.RobertaForSequenceClassification,
        lambda: transformers.RobertaConfig(
            vocab_size=50_265, max_position_embeddings=514, pad_token_id=1, type_vocab_size=1, **_BASE
        ),
        _roberta_bpe,
    ),
    "albert-base": _Shape(
        "albert-base-v2 (textattack/albert-base-v2-imdb)",
        transformers.AlbertForSequenceClassification,
        lambda: transformers.AlbertConfig(vocab_size=30_000, embedding_size=128, max_position_embeddings=512, **_BASE),
        _albert_unigram,
    ),
}
assert set(_SHAPES) == set(SHAPES), "the catalog names every shape built here"


@dataclass(frozen=True)
class ShapeBuild:
    """The bundles of one shape: by (max_length, precision)."""

    shape: str
    source: str
    parameters: int
    bundles: dict[tuple[int, str], Path]
    cached: bool


def _names(shape: str) -> dict[tuple[int, str], str]:
    short = f"{shape}-{SHORT_LENGTH}"
    return {
        (512, "fp32"): shape,
        (512, "int8"): bundle_name(shape, "int8"),
        (SHORT_LENGTH, "fp32"): short,
        (SHORT_LENGTH, "int8"): bundle_name(short, "int8"),
    }


def build_shape(shape: str, *, force: bool = False, progress: Progress | None = None) -> ShapeBuild:
    """Build (or find cached) the shape's checkpoint and its four bundles."""
    spec = _SHAPES[shape]
    paths = {key: models_dir() / name for key, name in _names(shape).items()}
    checkpoint = shape_checkpoint(shape)
    if not force and _built(paths, checkpoint):
        parameters = int(read_manifest(paths[512, "fp32"])["shape"]["parameters"])
        return ShapeBuild(shape, spec.source, parameters, paths, cached=True)
    step = (progress or (lambda _d, _t: lambda _n: None))(f"{shape}: building (random weights)", 5)
    models_dir().mkdir(parents=True, exist_ok=True)
    transformers.utils.logging.disable_progress_bar()  # the bars of save_pretrained, inside ours
    corpus = load_corpus("imdb")
    train, _ = split(corpus)
    tokenizer = spec.tokenizer([corpus.texts[i] for i in train[:TOKENIZER_TEXTS]])
    tokenizer.model_max_length = 512
    config = spec.config()
    config.pad_token_id = tokenizer.pad_token_id
    config.id2label = dict(enumerate(LABELS))
    config.label2id = {label: i for i, label in enumerate(LABELS)}
    torch.manual_seed(0)
    model = spec.model_class(config).eval()
    parameters = sum(p.numel() for p in model.parameters())
    step(1)
    if checkpoint.exists():
        shutil.rmtree(checkpoint)
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    record = {"name": shape, "source": spec.source, "parameters": parameters, "recipe": SHAPE_RECIPE}
    export_module(
        model, tokenizer, config, paths[512, "fp32"],
        name=shape, source=f"random weights with {spec.source}'s configuration: measures cost, not accuracy",
        max_length=512, extra_manifest={"shape": record},
    )  # fmt: skip
    step(1)
    quantize_bundle(paths[512, "fp32"], paths[512, "int8"], SAMPLE_TEXTS)
    step(1)
    for precision in ("fp32", "int8"):
        _shorter(paths[512, precision], paths[SHORT_LENGTH, precision])
        step(1)
    return ShapeBuild(shape, spec.source, parameters, paths, cached=False)


def _built(paths: dict[tuple[int, str], Path], checkpoint: Path) -> bool:
    if not checkpoint.is_dir() or not all(path.is_dir() for path in paths.values()):
        return False
    return read_manifest(paths[512, "fp32"]).get("shape", {}).get("recipe") == SHAPE_RECIPE


def _shorter(source: Path, out: Path) -> None:
    """A copy of ``source`` at 256 tokens with head+tail truncation; its model file hard-linked, not copied."""
    with tempfile.TemporaryDirectory(prefix="stream-clf-shape-", dir=out.parent) as scratch:
        staging = Path(scratch) / "bundle"
        staging.mkdir()
        for file in source.iterdir():
            if file.name == "model.onnx":
                os.link(file, staging / file.name)
            elif file.is_file():
                shutil.copy2(file, staging / file.name)
        manifest = read_manifest(source)
        manifest.update(name=out.name, max_length=SHORT_LENGTH, truncation=str(Truncation.HEAD_TAIL))
        write_manifest(staging, manifest)
        load_bundle(staging)
        if out.exists():
            shutil.rmtree(out)
        shutil.move(staging, out)
