"""tools/probe_layer_layout.py: the four layouts it times compute the same step."""
import jax
import numpy as np
import pytest

from rlhf_jax.models import PRESETS
from tests import tolerance as tol
from tools import probe_layer_layout as probe


def test_every_layout_computes_the_scans_loss_and_step():
    cfg, B, T = PRESETS["test"].replace(n_layers=3), 2, 16
    losses, params = {}, {}
    for v in probe.VARIANTS:
        fn, state, tokens = probe.build(v, cfg, B, T)
        blocks = state[0]["blocks"]
        # the layout is what it says: stacked arrays, or one dict per layer
        assert isinstance(blocks, list) == v.startswith("per_layer")
        (new, _), loss = fn(state, tokens)
        losses[v] = float(loss)
        stacked = new["blocks"] if isinstance(new["blocks"], dict) else jax.tree.map(
            lambda *a: np.stack(a), *new["blocks"])
        params[v] = {**{k: np.asarray(new[k]) for k in ("embed", "final_norm_scale")},
                     **{k: np.asarray(a) for k, a in stacked.items()}}
    chain = tol.decoder_chain(cfg.d_model, cfg.d_ff, cfg.n_layers, cfg.head_dim, T) + cfg.vocab_size + B * T
    for v in probe.VARIANTS:
        assert losses[v] == pytest.approx(losses["scan"], abs=tol.f32(chain, abs(losses["scan"])))
        # one AdamW step (lr 1e-5) from the same start, so each weight ends in the same place up to
        # Adam's sign flip on a gradient within rounding of zero; a weight put in another layer's
        # or another matrix's place would be off by its own size (about 0.02)
        for k, a in params[v].items():
            assert a.shape == params["scan"][k].shape
            assert np.abs(a - params["scan"][k]).max() <= tol.adam_flip_bound([1e-5], 0.9, 0.95)


def test_the_probe_runs_and_rejects_unknown_names():
    out = probe.main(["--model", "test", "--layers", "2", "--repeats", "1", "--variants", "scan,per_layer"])
    assert set(out) == {"scan", "per_layer"} and out["scan"]["speedup_vs_scan"] == 1.0
    assert out["per_layer"]["first_loss"] == pytest.approx(out["scan"]["first_loss"], rel=1e-5)
    with pytest.raises(SystemExit, match="choose from scan, unrolled, per_layer, per_layer_fused"):
        probe.main(["--variants", "unrolled,stacked"])
    with pytest.raises(SystemExit, match="unknown model '7b'; valid: "):
        probe.main(["--model", "7b"])
