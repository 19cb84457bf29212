"""Rankings packed with each prompt once (`shared_prompt.pack_rankings` + parent segments in the
attention mask) score every response as its own padded sequence does."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.data.shared_prompt import pack_rankings, packed_batch
from rlhf_jax.models import PRESETS, init_model
from rlhf_jax.models.forward import forward
from rlhf_jax.train.dpo import response_logprobs
from rlhf_jax.train.rm import score_rankings


def rankings(prompts, responses, T):
    """ranking_arrays' layout [N, K, T] from token lists (an empty response list: an empty slot)."""
    N, K = len(prompts), max(map(len, responses))
    out = {k: np.zeros((N, K, T), np.int32) for k in ("tokens", "mask", "loss_mask")}
    out["valid"], out["ranks"] = np.zeros((N, K), np.int32), np.tile(np.arange(K, dtype=np.int32), (N, 1))
    for i, (p, rs) in enumerate(zip(prompts, responses)):
        for j, r in enumerate(rs):
            ids = p + r
            out["tokens"][i, j, :len(ids)], out["mask"][i, j, :len(ids)] = ids, 1
            out["loss_mask"][i, j, len(p):len(ids)] = 1
            out["valid"][i, j] = 1
    return out


RNG = np.random.default_rng(0)
tok = lambda n: RNG.integers(3, 120, n).tolist()
# three prompts of 2-3 responses (one slot empty), of different lengths
ARRAYS = rankings([tok(5), tok(2), tok(7)], [[tok(3), tok(6), tok(1)], [tok(4), tok(2)], [tok(2), tok(5), tok(3)]], T=12)


def test_the_layout_by_hand():
    out = pack_rankings(ARRAYS, row_len=24)
    # group sizes (the prompt once): 5+3+6+1 = 15, 2+4+2 = 8, 7+2+5+3 = 17; largest first, each into
    # the first row with room: [17], then 15 opens row 1, where 8 fits beside it
    assert out["tokens"].shape == (2, 24)
    assert out["segment_ids"][0].tolist() == [1] * 7 + [2] * 2 + [3] * 5 + [4] * 3 + [0] * 7
    assert out["segment_ids"][1].tolist() == [1] * 5 + [2] * 3 + [3] * 6 + [4] + [5] * 2 + [6] * 4 + [7] * 2 + [0]
    assert out["parent_ids"][1, :23].tolist() == [1] * 15 + [5] * 8
    assert out["positions"][1, :15].tolist() == list(range(5)) + [5, 6, 7] + list(range(5, 11)) + [5]
    assert out["positions"][0, :17].tolist() == list(range(7)) + [7, 8] + list(range(7, 12)) + [7, 8, 9]
    assert out["score_row"].tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
    assert out["score_col"].tolist() == [[7, 13, 14], [20, 22, 0], [8, 13, 16]]
    assert (out["tokens"][0, 7:9] == ARRAYS["tokens"][2, 0, 7:9]).all()


@pytest.mark.parametrize("row_len, window", [(17, None), (24, None), (64, None), (64, 4)])
def test_packed_scores_equal_the_padded_sequences(row_len, window):
    # window: a sliding window counts positions in packed rows (a response after its siblings)
    cfg = PRESETS["test"].replace(vocab_size=128, sliding_window=window)
    model = init_model(cfg, head="scalar", seed=0)
    padded = np.asarray(score_rankings(model.graphdef, model.params, {k: jnp.asarray(v) for k, v in ARRAYS.items()}))
    p = pack_rankings(ARRAYS, row_len)
    values = forward(model.graphdef, model.params, jnp.asarray(p["tokens"]), positions_BxT=jnp.asarray(p["positions"]),
                     segment_ids_BxT=jnp.asarray(p["segment_ids"]), parent_ids_BxT=jnp.asarray(p["parent_ids"]))
    packed = np.asarray(values)[p["score_row"], p["score_col"]]
    valid = ARRAYS["valid"] == 1
    # the same float32 sums over the same keys, but in rows of another length: rounding only
    np.testing.assert_allclose(packed[valid], padded[valid], rtol=1e-5, atol=1e-6)
    # a response seeing its sibling would differ far beyond rounding
    leak = np.asarray(forward(model.graphdef, model.params, jnp.asarray(p["tokens"]),
                              positions_BxT=jnp.asarray(p["positions"]),
                              segment_ids_BxT=jnp.asarray(p["parent_ids"] * (p["segment_ids"] > 0))))
    assert np.abs(leak[p["score_row"], p["score_col"]][valid] - padded[valid]).max() > 1e-3


@pytest.mark.parametrize("row_len", [17, 64])
def test_packed_logprobs_equal_the_padded_sequences(row_len):
    # DPO's summed response log-probs: each response token read where it is predicted (a response's
    # first token from the prompt's last slot), summed by the response it belongs to
    model = init_model(PRESETS["test"].replace(vocab_size=128), seed=0)
    jnp_tree = lambda d: {k: jnp.asarray(v) for k, v in d.items()}
    padded = response_logprobs(model.graphdef, model.params, jnp_tree(ARRAYS))
    packed = response_logprobs(model.graphdef, model.params, jnp_tree(packed_batch(ARRAYS, multiple=4, row_len=row_len)))
    valid = ARRAYS["valid"] == 1
    np.testing.assert_array_equal(np.asarray(packed.count_BxK)[valid], np.asarray(padded.count_BxK)[valid])
    assert np.asarray(packed.count_BxK)[~valid].sum() == 0
    # sums of up to 6 float32 log-probs of magnitude ~5, each from the same logits up to rounding
    np.testing.assert_allclose(np.asarray(packed.sum_BxK)[valid], np.asarray(padded.sum_BxK)[valid], rtol=1e-5)


def test_groups_that_cannot_share_are_refused():
    bad = {k: v.copy() for k, v in ARRAYS.items()}
    bad["tokens"][0, 1, 0] += 1  # response 1 of ranking 0 under another prompt
    with pytest.raises(ValueError, match="ranking 0: responses 0 and 1 have different prompts"):
        pack_rankings(bad, 24)
    with pytest.raises(ValueError, match="ranking 2: 17 tokens"):
        pack_rankings(ARRAYS, 16)


def test_continuations_are_scored_with_each_context_once():
    # score_continuations (TruthfulQA's answers): a context shared by several continuations, one
    # split because its continuations do not fit max_row together, unique contexts, an empty
    # continuation; every row against the model on that sequence alone, unpadded
    from rlhf_jax.data.shared_prompt import continuation_batches
    from rlhf_jax.eval import scoring
    from rlhf_jax.models.forward import sequence_logprobs
    model = init_model(PRESETS["test"].replace(vocab_size=128), seed=0)
    a, b, c = tok(9), tok(3), tok(20)
    contexts = [a, b, a, c, a, b, c, c, tok(4), a]
    continuations = [tok(4), tok(2), tok(7), tok(30), [], tok(1), tok(25), tok(12), tok(6), tok(3)]
    contexts, continuations = contexts + [a], continuations + [continuations[2]]  # a repeated row
    got, counts = scoring.score_continuations(model, contexts, continuations, batch_size=2)
    assert got[-1] == got[2]  # scored once, so equal rows give equal numbers
    assert counts.tolist() == [len(x) for x in continuations]
    for i, (ctx, cont) in enumerate(zip(contexts, continuations)):
        seq = jnp.asarray([ctx + cont])
        target = jnp.asarray([[0] * len(ctx) + [1] * len(cont)])
        want = float(sequence_logprobs(model.graphdef, model.params, seq, jnp.ones_like(seq), target)[0][0])
        # a sum of <= 30 float32 log-probs (|logp| ~ 5) computed in rows of another length: rounding
        assert got[i] == pytest.approx(want, rel=1e-5, abs=1e-5), i
    # the layout: context c's continuations (30 + 25 + 12 tokens after 20) do not fit max_row = 64
    # together, so c appears twice; every continuation token is read exactly once
    seen = np.zeros(len(contexts), int)
    context_rows = 0
    for batch, col, target, index, last in continuation_batches(contexts, continuations, rows=2, max_row=64,
                                                                bucket=8):
        assert batch["tokens"].shape[0] in (1, 2) and col.shape == target.shape == index.shape
        np.add.at(seen, index[index >= 0], 1)
        context_rows += sum(row[:20].tolist() == c for row in batch["tokens"])
        for r, s in zip(*np.nonzero(index >= 0)):  # the slot that predicts a target holds the token before it
            i = index[r, s]
            assert target[r, s] in continuations[i]
        for i, r, s in zip(*last):  # each continuation's last token, where a reward model reads it
            assert batch["tokens"][r, s] == continuations[i][-1]
    assert seen.tolist() == [len(x) for x in continuations]
    assert context_rows == 2
    assert sorted(i for p in continuation_batches(contexts, continuations, rows=2) for i in p.last[0]) == [
        i for i, x in enumerate(continuations) if x]
