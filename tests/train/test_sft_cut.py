"""sft.cut_bucket: each SFT batch cut after its longest row gives the uncut batch's loss and
gradient, from fewer columns; the stage cuts every batch it trains on."""
import jax
import numpy as np
import pytest

from rlhf_jax.data import synthetic
from rlhf_jax.data.tokenize import TokenizeConfig, sft_arrays
from rlhf_jax.models import init_model
from rlhf_jax.stages import run as run_stages
from rlhf_jax.train import sft as sft_lib
from tests import tolerance as tol
from tests.micro import CFG, TOK, WORLD, micro

T = 48  # rows padded far past the task world's demonstrations (at most about 20 tokens each)


def test_a_cut_batch_has_the_same_loss_and_gradient():
    # one demonstration a row (sft.pack fills its rows, leaving little to cut)
    arrays, _ = sft_arrays(synthetic.sft_records(WORLD, 24), TOK, TokenizeConfig(max_len=T, max_prompt_len=8))
    batch = {k: v[:8] for k, v in arrays.items()}
    cut = sft_lib.cut_batch(batch, 8)
    real = (batch["segment_ids"] != 0) | (batch["loss_mask"] != 0)
    end = int(T - np.argmax(real.any(0)[::-1]))  # one past the last real column of any row
    width = cut["tokens"].shape[1]
    assert width == -(-end // 8) * 8 and width < T, (width, end)  # rounded up to the bucket, and a real cut
    for k, v in cut.items():
        np.testing.assert_array_equal(v, batch[k][:, :width])
    assert not batch["segment_ids"][:, width:].any() and not batch["loss_mask"][:, width:].any()  # only padding cut
    model = init_model(CFG, seed=0)
    loss = jax.jit(jax.value_and_grad(lambda p, b: sft_lib.sft_loss(model.graphdef)(p, b, None, None)[0]))
    (full_loss, full_g), (cut_loss, cut_g) = loss(model.params, batch), loss(model.params, cut)
    n_loss = int(batch["loss_mask"][:, 1:].sum())
    # the same sums in another order: the attention's softmax and value mix run over T against
    # `width` columns (the cut ones add exact zeros); the gradient sums the loss positions' terms
    assert float(cut_loss) == pytest.approx(float(full_loss), rel=0,
                                            abs=tol.f32(tol.decoder_chain(CFG.d_model, CFG.d_ff, CFG.n_layers,
                                                                          CFG.head_dim, T) + n_loss,
                                                        float(full_loss)))
    for a, b in zip(jax.tree.leaves(cut_g), jax.tree.leaves(full_g)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0,
                                   atol=tol.f32(tol.gradient_chain(CFG, T, n_loss), float(np.abs(b).max()) + 1e-30))
    # the check can fail: the loss at a shifted target (one column off) is far from it
    shifted = dict(cut, loss_mask=np.roll(cut["loss_mask"], 1, axis=1))
    assert abs(float(loss(model.params, shifted)[0]) - float(full_loss)) > 1e-3


def test_the_stage_trains_on_cut_batches(tmp_path, monkeypatch):
    widths = []
    real = sft_lib.cut_batch
    monkeypatch.setattr(sft_lib, "cut_batch", lambda b, bucket: (widths.append(real(b, bucket)["tokens"].shape[1]),
                                                                real(b, bucket))[1])
    c = micro(**{"stages": "sft", "sft.cut_bucket": 8, "sft.steps": 4, "data.max_len": 48})
    summary = run_stages(c, tmp_path, use_wandb=False)["sft"]
    T_micro = c.data.max_len
    assert len(widths) >= 4 and all(w % 8 == 0 or w == T_micro for w in widths) and min(widths) < T_micro, \
        (widths, T_micro)
    assert np.isfinite(summary["val_loss"]) and summary["steps"] == 4
    c.sft.cut_bucket = -1
    with pytest.raises(Exception, match=r"sft\.cut_bucket: must be >= 0"):
        run_stages(c, tmp_path / "bad", use_wandb=False)
