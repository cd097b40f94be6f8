"""Tiny random-weight Hugging Face checkpoints of each architecture, with tokenizers trained here.

Each checkpoint is what a user's fine-tuned model looks like on disk (``save_pretrained`` of a
``*ForSequenceClassification`` and its fast tokenizer), only small: the exporter and the worker
cannot tell the difference, and the weights' values do not matter for parity or for the pipeline.
Tokenizers are of the kind the real model uses: WordPiece (BERT, DistilBERT, MiniLM), byte-level
BPE (RoBERTa), SentencePiece-style Unigram (ALBERT, XLM-R, DeBERTa-v2).
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer

from stream_clf.tools.build.tiny_model import SAMPLE_TEXTS
from stream_clf.tools.build.tokenizer_kinds import byte_level_bpe, unigram, wordpiece

CORPUS = [*SAMPLE_TEXTS, "Café owners in Zürich say naïve pricing hurt them, 😀 or not."] * 20

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
POSITIONS = 128


def _wordpiece(lowercase: bool) -> Tokenizer:
    return wordpiece(CORPUS, 400, lowercase=lowercase)


def _byte_level_bpe() -> Tokenizer:
    return byte_level_bpe(CORPUS, 500)


def _unigram(lowercase: bool, special: list[str], template: tuple[str, str], unk: str) -> Tokenizer:
    return unigram(CORPUS, 300, lowercase=lowercase, special=special, template=template, unk=unk)


@dataclass(frozen=True)
class Architecture:
    """How to make one tiny checkpoint: its model class, config and tokenizer."""

    name: str
    model_class: Callable
    config: Callable[[int, int], transformers.PretrainedConfig]
    tokenizer: Callable[[], transformers.PreTrainedTokenizerFast]
    case_sensitive: bool


def _bert_tokenizer(lowercase: bool) -> Callable[[], transformers.PreTrainedTokenizerFast]:
    return lambda: transformers.BertTokenizerFast(tokenizer_object=_wordpiece(lowercase), do_lower_case=lowercase)


def _albert_tokenizer() -> transformers.PreTrainedTokenizerFast:
    core = _unigram(True, ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"], ("[CLS]", "[SEP]"), "<unk>")
    return transformers.AlbertTokenizerFast(tokenizer_object=core, do_lower_case=True)


def _xlmr_tokenizer() -> transformers.PreTrainedTokenizerFast:
    # fairseq's layout, as the real XLM-R has it: <s>, <pad>, </s>, <unk>, then SentencePiece's pieces.
    core = _unigram(False, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], ("<s>", "</s>"), "<unk>")
    return transformers.XLMRobertaTokenizerFast(tokenizer_object=core)


def _deberta_tokenizer() -> transformers.PreTrainedTokenizerFast:
    core = _unigram(False, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], ("[CLS]", "[SEP]"), "[UNK]")
    return transformers.DebertaV2TokenizerFast(tokenizer_object=core)


def _roberta_tokenizer() -> transformers.PreTrainedTokenizerFast:
    return transformers.RobertaTokenizerFast(tokenizer_object=_byte_level_bpe())


ARCHITECTURES = {
    arch.name: arch
    for arch in (
        Architecture(
            "bert",
            transformers.BertForSequenceClassification,
            lambda vocab, pad: transformers.BertConfig(
                vocab_size=vocab, pad_token_id=pad, max_position_embeddings=POSITIONS, **SMALL
            ),
            _bert_tokenizer(lowercase=False),
            case_sensitive=True,
        ),
        Architecture(
            "bert-uncased",
            transformers.BertForSequenceClassification,
            lambda vocab, pad: transformers.BertConfig(
                vocab_size=vocab, pad_token_id=pad, max_position_embeddings=POSITIONS, **SMALL
            ),
            _bert_tokenizer(lowercase=True),
            case_sensitive=False,
        ),
        Architecture(
            "distilbert",
            transformers.DistilBertForSequenceClassification,
            lambda vocab, pad: transformers.DistilBertConfig(
                vocab_size=vocab,
                pad_token_id=pad,
                max_position_embeddings=POSITIONS,
                dim=32,
                n_layers=2,
                n_heads=2,
                hidden_dim=64,
            ),
            _bert_tokenizer(lowercase=False),
            case_sensitive=True,
        ),
        Architecture(
            "minilm",
            transformers.BertForSequenceClassification,
            lambda vocab, pad: transformers.BertConfig(
                vocab_size=vocab,
                pad_token_id=pad,
                max_position_embeddings=POSITIONS,
                hidden_size=48,
                num_hidden_layers=3,
                num_attention_heads=4,
                intermediate_size=96,
            ),
            _bert_tokenizer(lowercase=True),
            case_sensitive=False,
        ),
        Architecture(
            "roberta",
            transformers.RobertaForSequenceClassification,
            lambda vocab, pad: transformers.RobertaConfig(
                vocab_size=vocab, pad_token_id=pad, max_position_embeddings=POSITIONS + 2, **SMALL
            ),
            _roberta_tokenizer,
            case_sensitive=True,
        ),
        Architecture(
            "albert",
            transformers.AlbertForSequenceClassification,
            lambda vocab, pad: transformers.AlbertConfig(
                vocab_size=vocab, pad_token_id=pad, max_position_embeddings=POSITIONS, embedding_size=16, **SMALL
            ),
            _albert_tokenizer,
            case_sensitive=False,
        ),
        Architecture(
            "xlm-roberta",
            transformers.XLMRobertaForSequenceClassification,
            lambda vocab, pad: transformers.XLMRobertaConfig(
                vocab_size=vocab, pad_token_id=pad, max_position_embeddings=POSITIONS + pad + 1, **SMALL
            ),
            _xlmr_tokenizer,
            case_sensitive=True,
        ),
        Architecture(
            "deberta-v2",
            transformers.DebertaV2ForSequenceClassification,
            lambda vocab, pad: transformers.DebertaV2Config(
                vocab_size=vocab, pad_token_id=pad, max_position_embeddings=POSITIONS, **SMALL
            ),
            _deberta_tokenizer,
            case_sensitive=True,
        ),
    )
}


def build_checkpoint(name: str, out: Path, labels: tuple[str, ...] = ("neg", "pos"), seed: int = 0) -> Path:
    """Save a tiny ``name`` checkpoint with random weights and its trained tokenizer to ``out``."""
    arch = ARCHITECTURES[name]
    tokenizer = arch.tokenizer()
    config = arch.config(len(tokenizer), tokenizer.pad_token_id)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    torch.manual_seed(seed)
    model = arch.model_class(config).eval()
    with torch.no_grad():  # random init leaves the head near zero; spread the logits so labels vary
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    model.save_pretrained(out)
    tokenizer.model_max_length = POSITIONS
    tokenizer.save_pretrained(out)
    return out
