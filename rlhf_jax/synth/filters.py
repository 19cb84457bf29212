"""The filters of Self-Instruct and the elimination rules of Evol-Instruct, each a small pure function.

Self-Instruct (Wang et al. 2023, section 2.3), in the order `self_instruct.py` applies them:
- `malformed`: the model's output held no parsable task (`parse.py` decides; counted, never dropped silently);
- `length_ok`: an instruction of `min_words`..`max_words` words;
- `bad_start`: it starts with punctuation or a non-ASCII character (the paper's "starting with punctuation"
  and "non-English characters" rule; a cheap proxy, not a language detector);
- `blocked_keyword`: it names something a text model cannot do (image, graph, file, draw, go to, ...);
- `DedupIndex`: an exact duplicate (normalised text) or a near duplicate (shingle Jaccard >= threshold,
  candidates from MinHash LSH) of an instruction already in the pool, through `rlhf_jax.data.curate`;
- `RougePool.max_score` > threshold: ROUGE-L F-measure (the `rouge-score` package, no stemming) against
  every instruction already in the pool, 0.7 in the paper.

Evol-Instruct (Xu et al. 2023, section 3.2), `evol_rule`:
(1) `no_new_information`: the paper asks an LLM whether the two prompts are equal. Deterministic proxy
    used here: the evolved prompt adds fewer than `min_new_words` content words (lower-cased alphabetic
    words not in `STOPWORDS`) to the original's, or its ROUGE-L F with the original is >= `same_rouge`;
(2) `refusal`: the response holds a refusal phrase ("sorry", "as an AI", ...) and is shorter than
    `refusal_max_words` words (the paper's rule: "sorry" and < 80 words); `response_too_short`: fewer than
    `min_response_words` words, or nothing but punctuation and stopwords;
(3) `copies_template`: the rewrite copies words of the evolving prompt ("#Rewritten Prompt#", "given prompt").
Beyond the paper, for small models: `rewrite_is_reply`, the "rewrite" is a reply to the rewriter, not a
prompt: it holds a refusal phrase or opens like an answer ("Sure", "I'm ready", "Here is").
"""
from __future__ import annotations

import hashlib
import re
import string
from typing import Iterable, Sequence

import numpy as np
from datasketch import MinHashLSH
from rouge_score import rouge_scorer

from rlhf_jax.data.curate import CurateConfig, jaccard, minhashes, shingle_hashes

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")

STOPWORDS = frozenset("""a an the and or but if then else of to in on at by for with from as into onto about over
under than that this these those it its is are was were be been being do does did done have has had having i me my
we our you your he she they them their his her what which who whom whose when where why how can could should would
may might must will shall not no nor so too very just also any some all each every such only own same other more most
please give write tell list make provide explain describe one two there here up out off again further once both few
""".split())


def words(text: str) -> list[str]:
    """Whitespace-separated words (the length unit of every bound here)."""
    return text.split()


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's tokens: lower-cased, non-alphanumeric characters as separators."""
    return _SCORER._tokenizer.tokenize(text)


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F-measure of two texts (symmetric), through the public rouge-score scorer."""
    return _SCORER.score(a, b)["rougeL"].fmeasure


class RougePool:
    """Instructions already in the pool, tokenised once; `max_score` is a candidate's highest ROUGE-L F
    against any of them (what `rouge_l` would give pair by pair, without re-tokenising the pool)."""

    def __init__(self, texts: Iterable[str] = ()):
        self.texts: list[str] = []
        self.tokens: list[list[str]] = []
        for t in texts:
            self.add(t)

    def add(self, text: str) -> None:
        self.texts.append(text)
        self.tokens.append(rouge_tokens(text))

    def scores(self, text: str) -> np.ndarray:
        cand = rouge_tokens(text)
        return np.array([rouge_scorer._score_lcs(t, cand).fmeasure for t in self.tokens], np.float64)

    def max_score(self, text: str) -> tuple[float, int]:
        """(highest ROUGE-L F, index of that pool entry); (0.0, -1) for an empty pool."""
        s = self.scores(text)
        return (float(s.max()), int(s.argmax())) if len(s) else (0.0, -1)

    def remove(self, text: str) -> None:
        """Drop the last entry equal to `text` (an instruction whose instance then failed)."""
        j = len(self.texts) - 1 - self.texts[::-1].index(text)
        del self.texts[j], self.tokens[j]

    def __len__(self) -> int:
        return len(self.texts)


def too_similar(score: float, threshold: float) -> bool:
    """Self-Instruct keeps an instruction only when its ROUGE-L with every pool entry is <= threshold."""
    return score > threshold


def length_ok(text: str, min_words: int, max_words: int) -> bool:
    return min_words <= len(words(text)) <= max_words


def bad_start(text: str) -> bool:
    """The text starts with punctuation or a non-ASCII character (after leading spaces)."""
    t = text.lstrip()
    return not t or t[0] in string.punctuation or not t[0].isascii()


def blocked_keyword(text: str, blocklist: Sequence[str]) -> str | None:
    """The first blocklisted keyword or phrase the text contains as whole words (case-insensitive)."""
    low = " " + " ".join(_WORD.findall(text.lower())) + " "
    for key in blocklist:
        if f" {key.lower()} " in low:
            return key
    return None


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


class DedupIndex:
    """Exact and near duplicates of the texts added so far, one candidate at a time.

    Exact: the same normalised text (case and whitespace folded), as `curate.exact_dedup` keys it.
    Near: shingle Jaccard >= threshold with an earlier text, candidates from MinHash LSH and checked on
    the exact Jaccard, as `curate.near_dedup` does (same shingles, hashes and LSH bands), so adding the
    texts of a list in order marks the same ones as `near_dedup` drops."""

    def __init__(self, near_threshold: float | None = 0.8):
        self.cfg = CurateConfig(near_dup_threshold=near_threshold, language=None, scrub_pii=False)
        self.exact: set[bytes] = set()
        bands, perm = self.cfg.bands, self.cfg.num_perm
        self.lsh = None if near_threshold is None else MinHashLSH(threshold=near_threshold, num_perm=perm,
                                                                  params=(bands, perm // bands))
        self.hashes: list[np.ndarray] = []
        self.keys: dict[str, int] = {}  # text -> its LSH key, for `remove`

    def check(self, text: str) -> str | None:
        """'exact_duplicate', 'near_duplicate' or None (new); does not add the text."""
        if hashlib.sha256(normalise(text).encode()).digest() in self.exact:
            return "exact_duplicate"
        if self.lsh is not None:
            h = shingle_hashes(text, self.cfg)
            m = minhashes([h], self.cfg)[0]
            if any(jaccard(self.hashes[j], h) >= self.cfg.near_dup_threshold for j in self.lsh.query(m)):
                return "near_duplicate"
        return None

    def add(self, text: str) -> None:
        self.exact.add(hashlib.sha256(normalise(text).encode()).digest())
        if self.lsh is not None:
            h = shingle_hashes(text, self.cfg)
            self.keys[text] = len(self.hashes)
            self.lsh.insert(len(self.hashes), minhashes([h], self.cfg)[0])
            self.hashes.append(h)

    def remove(self, text: str) -> None:
        """Forget a text added earlier (its hash set stays stored, unreachable)."""
        self.exact.discard(hashlib.sha256(normalise(text).encode()).digest())
        if self.lsh is not None and text in self.keys:
            self.lsh.remove(self.keys.pop(text))


def instruction_filter(text: str, f, dedup: DedupIndex, pool: RougePool) -> tuple[str | None, dict]:
    """The first Self-Instruct filter `text` fails ('too_short', 'too_long', 'bad_start',
    'blocked_keyword', 'exact_duplicate', 'near_duplicate', 'rouge_similar') or None, and details
    (the keyword, the max ROUGE-L and its pool entry). `f` is the config's `filters` block."""
    n = len(words(text))
    if n < f.min_words:
        return "too_short", {"words": n}
    if n > f.max_words:
        return "too_long", {"words": n}
    if bad_start(text):
        return "bad_start", {}
    key = blocked_keyword(text, f.blocklist)
    if key:
        return "blocked_keyword", {"keyword": key}
    dup = dedup.check(text)
    if dup:
        return dup, {}
    score, j = pool.max_score(text)
    if too_similar(score, f.rouge_threshold):
        return "rouge_similar", {"rouge_l": round(score, 4), "similar_to": pool.texts[j]}
    return None, {"rouge_l": round(score, 4)}


# --- Evol-Instruct's elimination rules ---------------------------------------------------------

def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in STOPWORDS}


def no_new_information(original: str, evolved: str, same_rouge: float, min_new_words: int) -> bool:
    """Rule 1 (proxy, see the module docstring)."""
    new = content_words(evolved) - content_words(original)
    return len(new) < min_new_words or rouge_l(original, evolved) >= same_rouge


def refusal(response: str, phrases: Sequence[str], max_words: int) -> bool:
    """Rule 2a: a refusal phrase in a response shorter than max_words words."""
    low = " ".join(response.lower().split())
    return len(words(response)) < max_words and any(p in low for p in phrases)


def response_too_short(response: str, min_words: int) -> bool:
    """Rule 2b: under min_words words, or only punctuation and stopwords."""
    return len(words(response)) < min_words or not content_words(response)


def copies_template(evolved: str, template_words: Sequence[str]) -> str | None:
    """Rule 3: the first evolving-prompt phrase the rewrite contains (case-insensitive)."""
    low = evolved.lower()
    return next((w for w in template_words if w.lower() in low), None)


def rewrite_is_reply(evolved: str, refusals: Sequence[str], openers: Sequence[str]) -> bool:
    """The rewrite answers the rewriter: a refusal phrase anywhere, or a reply opener first (after any
    leading emoji, quotes or punctuation)."""
    low = re.sub(r"^[^a-z0-9]+", "", " ".join(evolved.lower().split()))
    return any(p in low for p in refusals) or any(re.match(re.escape(o) + r"\b", low) for o in openers)


def evol_rule(original: str, evolved: str, response: str, e) -> str | None:
    """The first elimination rule a failed evolution breaks, or None; `e` is the config's
    `evol_instruct` block. Rule 3 is checked first: a rewrite that copies the template is a failure
    whatever its response."""
    if copies_template(evolved, e.template_words):
        return "copies_template"
    if rewrite_is_reply(evolved, e.refusals, e.reply_openers):
        return "rewrite_is_reply"
    if no_new_information(original, evolved, e.same_rouge, e.min_new_words):
        return "no_new_information"
    if refusal(response, e.refusals, e.refusal_max_words):
        return "refusal"
    if response_too_short(response, e.min_response_words):
        return "response_too_short"
    return None
