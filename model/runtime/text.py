"""Text preprocessing shared by training and serving: one tokenizer and one bag-of-words.

Training and the serving text path must turn a text into the same vector, so both go
through `tokenize` and a `BagOfWords` saved with the model (`to_json` / `from_json`).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

# Bumped whenever `tokenize` changes output, so a saved vocabulary is never paired with a
# tokenizer that splits text differently from the one it was built with.
TOKENIZER_VERSION = 1

# Scripts written without spaces between words: every character is its own token.
_CJK_RANGES = (
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3005, 0x3007),  # ideographic iteration mark, closing mark, number zero
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x312F),  # Bopomofo
    (0x3130, 0x318F),  # Hangul compatibility Jamo
    (0x31A0, 0x31BF),  # Bopomofo extended
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK unified ideographs extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xA960, 0xA97F),  # Hangul Jamo extended A
    (0xAC00, 0xD7FF),  # Hangul syllables, Jamo extended B
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x1B000, 0x1B16F),  # Kana supplement / extended
    (0x20000, 0x323AF),  # CJK extensions B..H, compatibility supplement
)


def _char_class(ranges: Iterable[tuple[int, int]]) -> str:
    """A regex character-class body for inclusive code-point ranges."""
    return "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)


def _mark_ranges() -> list[tuple[int, int]]:
    """Code-point ranges of combining marks (Unicode category M*). `re`'s `\\w` leaves
    them out, which would cut words of Indic and other scripts at every vowel sign."""
    ranges: list[tuple[int, int]] = []
    for cp in [*range(0x300, 0x20000), *range(0xE0100, 0xE01F0)]:
        if unicodedata.category(chr(cp)).startswith("M"):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    return ranges


@cache
def _token_pattern() -> re.Pattern[str]:
    """One CJK character, or a run of word characters and marks without CJK (built on
    first use: scanning the code points for marks takes a noticeable fraction of a second)."""
    cjk = _char_class(_CJK_RANGES)
    return re.compile(rf"[{cjk}]|(?:(?![{cjk}])[\w{_char_class(_mark_ranges())}])+")


def tokenize(text: str) -> list[str]:
    """Words of `text`: NFKC-normalised, casefolded runs of letters, digits,
    marks and underscores; each CJK ideograph, kana or Hangul character is a token of its
    own (those scripts do not separate words by spaces); punctuation is dropped."""
    normalised = unicodedata.normalize("NFKC", text).casefold()
    return [tok for tok in _token_pattern().findall(normalised) if any(ch.isalnum() for ch in tok)]


@dataclass
class BagOfWords:
    """Fixed vocabulary -> n x V float32 vectors (tag presence 0/1 when `binary`, else counts;
    with `idf`, those times each word's inverse document frequency, rows scaled to unit length:
    tf-idf, which keeps words common to every text from drowning the telling ones).

    Vocabulary entries are matched after `tokenize`, so an entry given from outside (e.g.
    the MIRFLICKR tag list) that tokenizes into several tokens, like a CJK word, matches
    that token sequence. Words outside the vocabulary are ignored.
    """

    vocabulary: list[str]
    binary: bool = True
    idf: list[float] | None = None  # per-column weights (tf-idf); None: the raw presence / counts
    _words: dict[str, list[int]] = field(init=False, repr=False, compare=False)
    _phrases: dict[tuple[str, ...], list[int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.idf is not None and (
            len(self.idf) != len(self.vocabulary) or not all(math.isfinite(w) and w > 0 for w in self.idf)
        ):
            raise ValueError("bag of words 'idf' must hold one finite positive weight per vocabulary word")
        self._words = {}
        self._phrases = {}
        for column, word in enumerate(self.vocabulary):
            tokens = tuple(tokenize(word))
            if len(tokens) == 1:
                self._words.setdefault(tokens[0], []).append(column)
            elif tokens:
                self._phrases.setdefault(tokens, []).append(column)

    @classmethod
    def fit(
        cls,
        texts: Iterable[str],
        min_count: int = 1,
        max_size: int | None = None,
        *,
        binary: bool = True,
        max_share: float = 1.0,
        tfidf: bool = False,
    ) -> BagOfWords:
        """Vocabulary of the words in at least `min_count` texts and at most a `max_share` of
        them (document frequency, so one long text cannot promote a word; the share cut drops
        stop words), most frequent first, ties by word; at most `max_size` words. With `tfidf`,
        counts weighted by the smoothed inverse document frequency ln((1 + n) / (1 + df)) + 1."""
        counts: Counter[str] = Counter()
        n = 0
        for text in texts:
            counts.update(set(tokenize(text)))
            n += 1
        ranked = sorted(
            (w for w, c in counts.items() if min_count <= c <= max_share * n), key=lambda w: (-counts[w], w)
        )
        vocabulary = ranked[:max_size] if max_size is not None else ranked
        if not tfidf:
            return cls(vocabulary=vocabulary, binary=binary)
        idf = [math.log((1 + n) / (1 + counts[w])) + 1.0 for w in vocabulary]
        return cls(vocabulary=vocabulary, binary=False, idf=idf)

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """n x V float32 bag-of-words matrix of `texts`."""
        out = np.zeros((len(texts), len(self.vocabulary)), dtype=np.float32)
        lengths = sorted({len(p) for p in self._phrases})
        for row, text in enumerate(texts):
            tokens = tokenize(text)
            columns = [c for tok in tokens for c in self._words.get(tok, ())]
            for n in lengths:
                for start in range(len(tokens) - n + 1):
                    columns.extend(self._phrases.get(tuple(tokens[start : start + n]), ()))
            if self.binary:
                out[row, columns] = 1.0
            else:
                np.add.at(out[row], columns, 1.0)
        if self.idf is not None:
            out *= np.asarray(self.idf, dtype=np.float32)
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            np.divide(out, norms, out=out, where=norms > 0)
        return out

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` (as `tokenize` splits it) that no vocabulary entry covers, in order
        and without repeats: the part of a query the encoder cannot see."""
        tokens = tokenize(text)
        covered = [tok in self._words for tok in tokens]
        for n in {len(p) for p in self._phrases}:
            for start in range(len(tokens) - n + 1):
                if tuple(tokens[start : start + n]) in self._phrases:
                    covered[start : start + n] = [True] * n
        return list(dict.fromkeys(tok for tok, known in zip(tokens, covered, strict=True) if not known))

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form, saved with a model so serving rebuilds the same vectors."""
        obj: dict[str, Any] = {
            "tokenizer": TOKENIZER_VERSION,
            "binary": self.binary,
            "vocabulary": list(self.vocabulary),
        }
        if self.idf is not None:
            obj["idf"] = list(self.idf)
        return obj

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> BagOfWords:
        """Inverse of `to_json`; refuses a vocabulary saved by a different tokenizer version."""
        version = obj.get("tokenizer", TOKENIZER_VERSION)
        if version != TOKENIZER_VERSION:
            raise ValueError(f"bag of words built with tokenizer v{version}, this code has v{TOKENIZER_VERSION}")
        vocabulary = obj["vocabulary"]
        if not isinstance(vocabulary, list) or not all(isinstance(w, str) for w in vocabulary):
            raise ValueError("bag of words 'vocabulary' must be a list of strings")
        idf = obj.get("idf")
        if idf is not None and (not isinstance(idf, list) or not all(isinstance(w, int | float) for w in idf)):
            raise ValueError("bag of words 'idf' must be a list of numbers")
        return cls(
            vocabulary=vocabulary, binary=bool(obj["binary"]), idf=None if idf is None else [float(w) for w in idf]
        )

    def __len__(self) -> int:
        return len(self.vocabulary)
