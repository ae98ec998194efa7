"""Tokenizer and bag of words: Unicode handling, deterministic vocabulary, exact vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.runtime.text import TOKENIZER_VERSION, BagOfWords, tokenize


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!!  -- ...", ["hello", "world"]),
        ("ＡＢＣ１２３ Straße", ["abc123", "strasse"]),  # NFKC full-width, casefold ß
        ("Cafe\u0301 CAFÉ", ["café", "café"]),  # combining accent composed by NFKC
        ("東京タワー", ["東", "京", "タ", "ワ", "ー"]),
        ("iphone手机 2024", ["iphone", "手", "机", "2024"]),
        ("서울 맛집", ["서", "울", "맛", "집"]),
        ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),  # vowel signs stay inside the word
        ("plant_life ___ ... !!", ["plant_life"]),
        ("360° geo:tool=gmif", ["360", "geo", "tool", "gmif"]),
        ("", []),
    ],
)
def test_tokenize(text: str, expected: list[str]) -> None:
    assert tokenize(text) == expected


def test_fit_orders_by_document_frequency_then_word() -> None:
    texts = ["b a", "a c", "A b", "d d d d", "c"]
    # document frequencies: a 3, b 2, c 2, d 1 (repeats within one text count once)
    assert BagOfWords.fit(texts).vocabulary == ["a", "b", "c", "d"]
    assert BagOfWords.fit(texts, min_count=2).vocabulary == ["a", "b", "c"]
    assert BagOfWords.fit(texts, max_size=2).vocabulary == ["a", "b"]
    assert BagOfWords.fit(list(reversed(texts))).vocabulary == ["a", "b", "c", "d"]


def test_transform_binary_and_counts() -> None:
    texts = ["sky sky sea", "unknown words only", "", "Sea, SKY! tree"]
    binary = BagOfWords(vocabulary=["sky", "sea", "tree"], binary=True).transform(texts)
    counts = BagOfWords(vocabulary=["sky", "sea", "tree"], binary=False).transform(texts)
    assert binary.dtype == np.float32 and binary.shape == (4, 3)
    np.testing.assert_array_equal(binary, [[1, 1, 0], [0, 0, 0], [0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(counts, [[2, 1, 0], [0, 0, 0], [0, 0, 0], [1, 1, 1]])


def test_fit_max_share_drops_words_in_too_many_texts() -> None:
    texts = ["the sky", "the sea", "the sky and sea", "tree"]  # df: the 3, sky 2, sea 2, and 1, tree 1
    assert BagOfWords.fit(texts, max_share=0.5).vocabulary == ["sea", "sky", "and", "tree"]
    assert BagOfWords.fit(texts, max_share=0.75).vocabulary[0] == "the"
    assert BagOfWords.fit(texts, min_count=2, max_share=0.5, max_size=1).vocabulary == ["sea"]


def test_tfidf_matches_scikit_learn() -> None:
    # oracle: scikit-learn's TfidfVectorizer (smooth idf, l2 rows) on the same tokens and vocabulary
    from sklearn.feature_extraction.text import TfidfVectorizer

    train = ["Sky over the sea, the sea!", "a tree by the sea", "SKY and tree and sky", "東京 sky", "the"]
    queries = [*train, "unknown words only", "", "sea sea sea tree 東"]
    bow = BagOfWords.fit(train, tfidf=True)
    assert bow.idf is not None and bow.binary is False
    oracle = TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None, vocabulary=bow.vocabulary)
    oracle.fit(train)
    ours = bow.transform(queries)
    np.testing.assert_allclose(ours, oracle.transform(queries).toarray(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(ours[:4], axis=1), 1.0, rtol=1e-6)
    assert not ours[5:7].any()  # texts with no known word stay all zero, not NaN
    restored = BagOfWords.from_json(json.loads(json.dumps(bow.to_json())))
    np.testing.assert_array_equal(restored.transform(queries), ours)


@pytest.mark.parametrize("idf", [[1.0], [1.0, float("nan")], [1.0, 0.0], "x"])
def test_from_json_refuses_bad_idf(idf: object) -> None:
    with pytest.raises(ValueError, match="idf"):
        BagOfWords.from_json({"binary": False, "vocabulary": ["a", "b"], "idf": idf})


def test_external_vocabulary_entries_spanning_several_tokens() -> None:
    # MIRFLICKR tags such as 東京 or 360° tokenize into other tokens; they must still match.
    bow = BagOfWords(vocabulary=["東京", "360°", "sky", "京"], binary=True)
    out = bow.transform(["東京 sky", "360°", "京都", "東 京"])
    np.testing.assert_array_equal(out, [[1, 0, 1, 1], [0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 1]])


def test_json_round_trip_and_version_check() -> None:
    bow = BagOfWords.fit(["x y", "y z"], binary=False)
    restored = BagOfWords.from_json(json.loads(json.dumps(bow.to_json())))
    assert restored.vocabulary == bow.vocabulary == ["y", "x", "z"]
    assert restored.binary is False and len(restored) == 3
    np.testing.assert_array_equal(restored.transform(["z y y"]), bow.transform(["z y y"]))
    with pytest.raises(ValueError, match="tokenizer"):
        BagOfWords.from_json({**bow.to_json(), "tokenizer": TOKENIZER_VERSION + 1})


def test_unknown_words_are_the_tokens_no_entry_covers() -> None:
    bow = BagOfWords(vocabulary=["sky", "sea", "東京", "new york"], binary=True)
    assert bow.unknown_words("Sky over the SEA, the sea!") == ["over", "the"]
    assert bow.unknown_words("東京 at night") == ["at", "night"]  # a CJK entry is two tokens, covered together
    assert bow.unknown_words("new york new") == ["new"]  # "new" alone is no entry; in the phrase it is covered
    assert bow.unknown_words("") == [] and bow.unknown_words("sky") == []
    # the oracle: a text's vector is all zero exactly when every word is unknown
    for text in ("sky over", "over the", "york", "new york", "東 京"):
        assert (bow.transform([text]).sum() == 0) == (len(bow.unknown_words(text)) == len(set(tokenize(text)))), text
