"""metrics.py: each metric on a small case with a hand-computed or independently computed value."""
import jax
import numpy as np
import pytest

from rlhf_jax.eval import metrics, scoring
from tests.eval_tiny import tiny_model, word_tokenizer


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_perplexity_from_summed_nll_and_counts():
    assert metrics.perplexity([2.0, 4.0], [1, 3]) == pytest.approx(np.exp(6.0 / 4.0))
    with pytest.raises(ValueError):
        metrics.perplexity([0.0], [0])


@pytest.mark.parametrize("lengths, T", [([7, 4, 9], 10),
                                        ([7, 4, 9, 40, 66, 33], 70)])  # batches cut to 32 / 64 / 70 columns
def test_heldout_nll_matches_an_unbatched_computation(lengths, T):
    model = tiny_model()
    rng = np.random.default_rng(0)
    tokens = np.zeros((len(lengths), T), np.int32)
    loss_mask = np.zeros((len(lengths), T), np.int32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(3, 128, n)
        loss_mask[i, 2:n] = 1  # the first two tokens are "prompt"
    nll, count = metrics.heldout_nll(model, tokens, loss_mask, batch_size=2)
    expected = []
    for i, n in enumerate(lengths):  # one unpadded row at a time
        logits = np.asarray(model(tokens[i:i + 1, :n])[0])[0]
        logp = _log_softmax(logits)
        expected.append(-sum(logp[t - 1, tokens[i, t]] for t in range(2, n)))
    np.testing.assert_allclose(nll, expected, rtol=1e-5)
    np.testing.assert_array_equal(count, [n - 2 for n in lengths])
    assert metrics.perplexity(nll, count) == pytest.approx(np.exp(sum(expected) / sum(count)), rel=1e-5)


def test_rows_by_length_cuts_each_batch_after_its_longest_row_and_keeps_the_order():
    from rlhf_jax.models import forward as F
    ends = np.array([3, 70, 10, 40, 0])
    tokens = np.arange(5)[:, None] * 1000 + np.arange(80)[None]  # row i, column t: 1000 i + t
    mask = (np.arange(80)[None] < ends[:, None]).astype(np.int32)
    np.testing.assert_array_equal(F.row_ends(mask), ends)
    scored = np.zeros_like(mask)
    scored[1, 75] = 1  # either mask ends a row
    np.testing.assert_array_equal(F.row_ends(mask, scored), [3, 76, 10, 40, 0])
    calls = []

    def fn(t, m):
        calls.append(t.shape)
        return {"first": t[:, 0], "width": np.full(len(t), t.shape[1])}

    out = F.rows_by_length(fn, (tokens, mask), ends, batch_size=2)
    # sorted ends 0, 3 | 10, 40 | 70 (+ a copy of itself): widths rounded up to 32, at most T = 80
    assert calls == [(2, 32), (2, 64), (2, 80)]
    np.testing.assert_array_equal(out["first"], [0, 1000, 2000, 3000, 4000])
    np.testing.assert_array_equal(out["width"], [32, 80, 64, 64, 32])


def test_demonstration_scores_in_cut_batches_equal_one_unpadded_row_at_a_time():
    from rlhf_jax.models import PRESETS, init_model
    from rlhf_jax.models.forward import score_at_last
    from rlhf_jax.train import rm as rm_lib
    model = init_model(PRESETS["test"], head="scalar", seed=1)
    lengths = [5, 70, 12, 40, 33, 64, 9]
    rng = np.random.default_rng(0)
    tokens = np.zeros((len(lengths), 80), np.int32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(3, 128, n)
    mask = (tokens != 0).astype(np.int32)
    scores = rm_lib.demonstration_scores(model.graphdef, model.params, tokens, mask, batch_size=3)
    one = [float(score_at_last(model.graphdef, model.params, tokens[i:i + 1, :n], mask[i:i + 1, :n])[0])
           for i, n in enumerate(lengths)]
    # the same float32 forward pass on other widths (32, 64, 80 columns against n): rounding only
    np.testing.assert_allclose(scores, one, rtol=1e-5, atol=1e-6)


def test_rouge_identical_is_one_and_a_hand_computed_pair():
    same = metrics.rouge(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert all(v[0] == pytest.approx(1.0) for v in same.values())
    # "the cat sat" vs "the cat sat on the mat": unigram overlap 3, P = 3/3, R = 3/6 -> F = 2/3;
    # bigrams (the cat), (cat sat) both in the 5 reference bigrams: P = 1, R = 2/5 -> F = 4/7; LCS = 3 -> 2/3
    r = metrics.rouge(["the cat sat", "dog"], ["the cat sat on the mat", "cat"])
    assert r["rouge1"][0] == pytest.approx(2 / 3)
    assert r["rouge2"][0] == pytest.approx(4 / 7)
    assert r["rougeL"][0] == pytest.approx(2 / 3)
    assert r["rouge1"][1] == 0.0


def test_bleu_against_sacrebleus_documented_example():
    # sacrebleu README: BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ratio = 0.944 hyp_len = 17 ref_len = 18)
    hyps = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    refs = [["The dog bit the man.", "The dog had bit the man."],
            ["It was not unexpected.", "No one was surprised."],
            ["The man bit him first.", "The man had bitten the dog."]]
    assert metrics.bleu(hyps, refs) == pytest.approx(48.53, abs=0.005)
    # the same from its n-gram precisions and brevity penalty: BP * exp(mean log p_n)
    p = np.array([14 / 17, 7 / 14, 5 / 11, 3 / 8])
    assert metrics.bleu(hyps, refs) == pytest.approx(100 * np.exp(1 - 18 / 17) * np.exp(np.log(p).mean()), abs=1e-6)
    assert metrics.bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(100.0)


def test_exact_match_normalises_case_punctuation_and_articles():
    got = metrics.exact_match(["The Cat!", "a dog", "Paris"], ["cat", "cat", ["London", "paris."]])
    np.testing.assert_array_equal(got, [1.0, 0.0, 1.0])
    assert metrics.normalize_answer("  An Apple, the  end. ") == "apple end"


def test_lengths_and_eos_rate_from_generation_masks():
    eos = 2
    tokens = np.array([[5, 6, 2, 0], [5, 6, 7, 8], [2, 0, 0, 0]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    np.testing.assert_array_equal(metrics.response_lengths(mask), [3, 4, 1])
    np.testing.assert_array_equal(metrics.eos_flags(tokens, mask, [eos]), [1.0, 0.0, 1.0])
    # an EOS id inside the padding (mask 0) does not count
    np.testing.assert_array_equal(metrics.eos_flags([[5, 2]], [[1, 0]], [eos]), [0.0])


def test_distinct_n_and_repetition_by_hand():
    seqs = ["a b a b", "a b c"]
    # bigrams: ab ba ab | ab bc -> 5 total, 3 unique
    assert metrics.distinct_n(seqs, 2) == pytest.approx(3 / 5)
    # unigrams: a b a b a b c -> 7 total, 3 unique
    assert metrics.distinct_n(seqs, 1) == pytest.approx(3 / 7)
    # within "a b a b": bigrams ab ba ab -> 1 of 3 repeats; "a b c": none; [1]: no bigram
    np.testing.assert_allclose(metrics.repetition_rate(seqs + [[1]], 2), [1 / 3, 0.0, 0.0])
    assert metrics.distinct_n([[1, 2, 3], [1, 2, 4]], 2) == pytest.approx(3 / 4)  # token ids work too


def test_mauve_identical_sets_near_one_and_far_sets_near_zero():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(60, 8))
    assert metrics.mauve_score(p, p.copy()) == pytest.approx(1.0, abs=1e-6)
    assert metrics.mauve_score(p, p + 10.0) < 0.05


def test_pooled_features_match_per_row_hidden_states():
    model = tiny_model(seed=1)
    tok = word_tokenizer()
    texts = ["the cat sat on the mat", "dog ran", "very good answer ."]
    last = scoring.text_features(model, tok, texts, pool="last", batch_size=2)
    mean = scoring.text_features(model, tok, texts, pool="mean", batch_size=2)
    for i, t in enumerate(texts):
        ids = np.array([tok.encode(t, add_special_tokens=False)])
        hidden = np.asarray(model(ids, features=True)[0])[0]
        np.testing.assert_allclose(last[i], hidden[-1], atol=1e-5)
        np.testing.assert_allclose(mean[i], hidden.mean(0), atol=1e-5)


def test_greedy_match_on_a_hand_computed_toy():
    # candidate tokens e1, e2; reference tokens e1, e1 (+ one padded slot holding e2, masked out)
    cand = np.array([[[1.0, 0.0], [0.0, 2.0]]])
    ref = np.array([[[3.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    p, r, f = jax.device_get(metrics.greedy_match(cand, np.ones((1, 2)), ref, np.array([[1, 1, 0]])))
    # sims: e1.e1 = 1, e2.e1 = 0 -> precision (1 + 0) / 2; recall (1 + 1) / 2 = 1; F1 = 2 * 0.5 / 1.5
    assert (p[0], r[0]) == (pytest.approx(0.5), pytest.approx(1.0))
    assert f[0] == pytest.approx(2 / 3)


def test_embedding_similarity_of_identical_texts_is_one():
    model = tiny_model(seed=2)
    tok = word_tokenizer()
    cands = ["the cat sat on the mat", "dog ran fast"]
    out = metrics.embedding_similarity(model, tok, cands, ["the cat sat on the mat", "a slow cat"])
    assert out["f1"][0] == pytest.approx(1.0, abs=1e-6)
    assert out["precision"][0] == pytest.approx(1.0, abs=1e-6)
    assert out["f1"][1] < 0.99
