"""Automatic metrics of generated text: functions of samples, references and (local) models.

- perplexity: from summed token NLL and token counts; `heldout_nll` computes both batched and
  jitted with our model on right-padded rows and a loss mask.
- overlap with references: ROUGE-1/2/L F1 (`rouge-score`), corpus BLEU (`sacrebleu`), exact
  match after SQuAD-style normalisation.
- shape of the samples: response length and EOS rate from generation masks, distinct-n
  (unique / total n-grams over the whole set) and repetition rate (within each response).
- distribution and similarity: MAUVE (`mauve-text`) on features from a local checkpoint's
  final hidden states (`scoring.text_features`), and a BERTScore-style greedy cosine matching
  of token hidden states (precision / recall / F1).

Per-item metrics return arrays (turn them into estimates with `stats.mean`); corpus-level
metrics (perplexity, BLEU, distinct-n, MAUVE) return numbers.
"""
from __future__ import annotations

import functools
import re
import string
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.eval import scoring
from rlhf_jax.models import forward as F

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


# --- perplexity -----------------------------------------------------------------------------

def perplexity(nll_sum, token_count) -> float:
    """exp(sum of token NLLs / number of tokens); arrays (per sequence or batch) are summed first."""
    n = float(np.sum(token_count))
    if n <= 0:
        raise ValueError("no tokens: perplexity is undefined")
    return float(np.exp(float(np.sum(nll_sum)) / n))


def heldout_nll(model, tokens_NxT, loss_mask_NxT, mask_NxT=None, batch_size: int = 16
                ) -> tuple[np.ndarray, np.ndarray]:
    """(nll_sum_N, token_count_N) of held-out rows under `model` (an LM-head Model).

    tokens_NxT are right-padded; token t is scored when loss_mask_NxT[t] = 1 (the convention
    of `objectives.lm.next_token_loss` and the SFT arrays); mask_NxT marks real tokens
    (default: every position up to each row's last scored token).
    """
    tokens = np.asarray(tokens_NxT, np.int32)
    loss_mask = np.asarray(loss_mask_NxT, np.int32)
    if mask_NxT is None:
        last = np.where(loss_mask.any(1), loss_mask.shape[1] - 1 - np.argmax(loss_mask[:, ::-1], 1), 0)
        mask_NxT = (np.arange(tokens.shape[1])[None] <= last[:, None]).astype(np.int32)
    mask = np.asarray(mask_NxT, np.int32)
    fn = functools.partial(scoring.sequence_logprobs, model.graphdef, model.params)
    # rows of similar length together, each batch cut after its longest row
    logprob, count = F.rows_by_length(fn, (tokens, mask, loss_mask), F.row_ends(mask, loss_mask), batch_size)
    return -logprob.astype(np.float64), count.astype(np.int64)


# --- overlap with references ----------------------------------------------------------------

def rouge(predictions: Sequence[str], references: Sequence[str], types: Sequence[str] = ROUGE_TYPES,
          use_stemmer: bool = False) -> dict[str, np.ndarray]:
    """{type: f1_N}: ROUGE F-measure of each prediction against its reference (rouge-score)."""
    from rouge_score import rouge_scorer
    _same_length(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {t: np.array([s[t].fmeasure for s in scores]) for t in types}


def bleu(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], **kwargs) -> float:
    """Corpus BLEU (0-100, sacrebleu defaults: 13a tokenisation, exponential smoothing).

    references: one string per prediction, or a list of reference strings per prediction
    (all predictions need the same number of references, as in sacrebleu's streams).
    """
    import sacrebleu
    _same_length(predictions, references)
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    k = {len(r) for r in refs}
    if len(k) != 1:
        raise ValueError(f"every prediction needs the same number of references, got {sorted(k)}")
    streams = [list(s) for s in zip(*refs)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams, **kwargs).score)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]) -> np.ndarray:
    """match_N in {0, 1}: the normalised prediction equals a normalised reference (any of several)."""
    _same_length(predictions, references)
    out = []
    for pred, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else refs
        out.append(float(any(normalize_answer(pred) == normalize_answer(r) for r in refs)))
    return np.array(out)


# --- shape of the samples -------------------------------------------------------------------

def response_lengths(mask_BxN) -> np.ndarray:
    """length_B: response tokens per row (generation mask; an EOS, when sampled, counts)."""
    return np.asarray(mask_BxN).astype(np.int64).sum(axis=1)


def eos_flags(tokens_BxN, mask_BxN, eos_token_ids: Sequence[int]) -> np.ndarray:
    """ended_B in {0, 1}: the response contains an EOS among its real tokens (it stopped on its own)."""
    tokens, mask = np.asarray(tokens_BxN), np.asarray(mask_BxN).astype(bool)
    return (np.isin(tokens, np.asarray(list(eos_token_ids))) & mask).any(axis=1).astype(np.float64)


def _tokens(seq) -> list:
    return seq.split() if isinstance(seq, str) else list(seq)


def _ngrams(tokens: list, n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(sequences: Sequence, n: int) -> float:
    """Unique n-grams / total n-grams over all sequences (Li et al. 2016).

    A sequence is a string (split on whitespace) or a list of token ids.
    """
    grams = [g for s in sequences for g in _ngrams(_tokens(s), n)]
    if not grams:
        raise ValueError(f"no sequence has {n} tokens: distinct-{n} is undefined")
    return len(set(grams)) / len(grams)


def repetition_rate(sequences: Sequence, n: int) -> np.ndarray:
    """rate_N: fraction of each sequence's n-grams that repeat an earlier n-gram of it (0 if none).

    That is 1 - unique / total n-grams within the sequence; a degenerate loop tends to 1.
    """
    out = []
    for s in sequences:
        grams = _ngrams(_tokens(s), n)
        out.append(1.0 - len(set(grams)) / len(grams) if grams else 0.0)
    return np.array(out)


# --- distribution and similarity with a local checkpoint ------------------------------------

def mauve_score(p_features_NxD, q_features_MxD, *, num_buckets: int | str = "auto", seed: int = 25,
                **kwargs) -> float:
    """MAUVE (Pillutla et al. 2021) between two sets of feature vectors (`mauve.compute_mauve`).

    Features come from `scoring.text_features(model, tokenizer, texts)` of a local checkpoint
    (the paper uses GPT-2 large's last-token hidden state). About 1 for one distribution,
    near 0 for disjoint ones; it needs tens of samples per set (num_buckets = n / 10 by default).
    """
    import mauve
    out = mauve.compute_mauve(p_features=np.asarray(p_features_NxD, np.float32),
                              q_features=np.asarray(q_features_MxD, np.float32), num_buckets=num_buckets,
                              seed=seed, verbose=False, **kwargs)
    return float(out.mauve)


@jax.jit
def greedy_match(cand_BxSxD, cand_mask_BxS, ref_BxTxD, ref_mask_BxT):
    """(precision_B, recall_B, f1_B) of BERTScore's greedy cosine matching (no idf, no rescaling).

    precision: mean over candidate tokens of the best cosine similarity to a reference token;
    recall: mean over reference tokens of the best similarity to a candidate token.
    """
    unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    sim_BxSxT = jnp.einsum("bsd,btd->bst", unit(cand_BxSxD.astype(jnp.float32)), unit(ref_BxTxD.astype(jnp.float32)))
    cm, rm = cand_mask_BxS.astype(bool), ref_mask_BxT.astype(bool)
    sim_BxSxT = jnp.where(cm[:, :, None] & rm[:, None, :], sim_BxSxT, -jnp.inf)
    best_c_BxS = jnp.where(cm, sim_BxSxT.max(axis=2), 0.0)
    best_r_BxT = jnp.where(rm, sim_BxSxT.max(axis=1), 0.0)
    precision = best_c_BxS.sum(1) / jnp.maximum(cm.sum(1), 1)
    recall = best_r_BxT.sum(1) / jnp.maximum(rm.sum(1), 1)
    f1 = 2 * precision * recall / jnp.where(precision + recall == 0, 1.0, precision + recall)
    return precision, recall, f1


def embedding_similarity(model, tokenizer, candidates: Sequence[str], references: Sequence[str],
                         batch_size: int = 16, max_len: int = 256) -> dict[str, np.ndarray]:
    """{"precision", "recall", "f1"}: BERTScore-style scores (each _N) from `model`'s final hidden states.

    The checkpoint is any local Model (a decoder: each token's state sees only its left
    context). Unlike BERTScore there is no idf weighting and no baseline rescaling.
    """
    _same_length(candidates, references)
    cand, cmask = scoring.text_token_features(model, tokenizer, candidates, batch_size, max_len)
    ref, rmask = scoring.text_token_features(model, tokenizer, references, batch_size, max_len)
    p, r, f = greedy_match(cand, cmask, ref, rmask)
    return {"precision": np.asarray(p, np.float64), "recall": np.asarray(r, np.float64),
            "f1": np.asarray(f, np.float64)}


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions but {len(b)} references")


__all__ = ["ROUGE_TYPES", "perplexity", "heldout_nll", "rouge", "bleu", "normalize_answer", "exact_match",
           "response_lengths", "eos_flags", "distinct_n", "repetition_rate", "mauve_score", "greedy_match",
           "embedding_similarity"]
