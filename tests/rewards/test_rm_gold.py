"""Another run's reward model as the gold reward (`data.gold = "rm:WORKDIR"`): it scores what
that run's own trained reward scores, on token arrays and on texts alike, is refused before its
stage rm has finished, and runs as best-of-n's gold in a second workdir that never trains it."""
import json

import numpy as np
import pytest

from rlhf_jax.context import build_context
from rlhf_jax.data.tokenize import Unfinished, decode_sampled, encode_example, pad_right
from rlhf_jax.errors import UserError
from rlhf_jax.rewards import score_in_chunks
from rlhf_jax.rewards.rm_gold import RMGoldReward
from rlhf_jax.stages import run as run_pipeline
from rlhf_jax.stages.gold import gold_reward
from rlhf_jax.stages.reward import trained_reward
from tests.micro import micro


GOLD_SEED = 100


@pytest.fixture(scope="module")
def gold_workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gold")
    # a seed no judged run below uses: a gold RM drawing its score head from the judged run's head
    # seed is refused (test_a_gold_rm_with_the_runs_head_seed_is_refused)
    run_pipeline(micro(stages="sft,rm", **{"rm.steps": 3, "seed": GOLD_SEED}), path, use_wandb=False)
    return path


def test_rm_gold_scores_as_the_source_run_scores(gold_workdir, tmp_path):
    source = build_context(micro(seed=GOLD_SEED), gold_workdir, use_wandb=False)
    reward, params, _, _ = trained_reward(source, "bon")
    ctx = build_context(micro(**{"data.gold": f"rm:{gold_workdir}"}), tmp_path / "other", use_wandb=False)
    gold = gold_reward(ctx)
    assert isinstance(gold, RMGoldReward)
    prompts = [r["prompt"] for r in ctx.data.records("eval_prompts")[:6]]
    responses = ["1 2 3", "3 2 1", "", "9", "1 1", "2"]
    ids = [encode_example(ctx.tokenizer, p, r, ctx.data.tcfg)[0] for p, r in zip(prompts, responses)]
    tokens, mask = pad_right(ids, ctx.tokenizer.pad_token_id or 0, ctx.data.tcfg.max_len)
    want = score_in_chunks(reward, params, tokens, mask, 0)
    # the same jitted computation on the same parameters (a mean over one member): equal up to the
    # last bits a different program layout may change
    np.testing.assert_allclose(gold.fn(prompts, responses), want, rtol=1e-5, atol=1e-6)
    n_prompt = 4
    np.testing.assert_allclose(gold.host_scores(tokens[:, :n_prompt], mask[:, :n_prompt], tokens[:, n_prompt:],
                                                mask[:, n_prompt:]), want, rtol=1e-5, atol=1e-6)
    assert np.ptp(want) > 0  # not a constant: the comparison could fail


def test_a_cut_response_is_read_at_its_last_token_by_text_and_by_tokens(gold_workdir, tmp_path):
    """One readout rule: a sampled response with no EOS is scored at its last sampled token, whether
    the judge gets its tokens (PPO's rewards, best-of-n, host_scores) or its decoded text (the
    evaluation's text judges); a finished one, at its EOS, both ways."""
    ctx = build_context(micro(**{"data.gold": f"rm:{gold_workdir}"}), tmp_path / "other", use_wandb=False)
    gold, tok, tcfg = gold_reward(ctx), ctx.tokenizer, ctx.data.tcfg
    prompts = [r["prompt"] for r in ctx.data.records("eval_prompts")[:4]]
    bodies = ["1 2 3", "3 2 1", "9 9", "2"]
    pad = tok.pad_token_id or 0
    prompt_ids = [encode_example(tok, p, "", tcfg)[0][:-1] for p in prompts]  # the prompt alone (no EOS)
    # rows 0 and 2 ended (EOS sampled), rows 1 and 3 cut at the limit
    response_ids = [tok.encode(b, add_special_tokens=False) + ([tok.eos_token_id] if i % 2 == 0 else [])
                    for i, b in enumerate(bodies)]
    n = max(map(len, response_ids))
    p_tok, p_mask = pad_right(prompt_ids, pad)
    r_tok, r_mask = pad_right(response_ids, pad, n)
    texts, ended = decode_sampled(tok, r_tok, r_mask)
    assert ended.tolist() == [True, False, True, False]
    assert [isinstance(t, Unfinished) for t in texts] == [False, True, False, True] and texts == bodies
    by_text = gold.fn(prompts, texts)
    # the token path: each row's real tokens, read at the last one
    want = score_in_chunks(gold.model, gold.params, *pad_right([p + r for p, r in zip(prompt_ids, response_ids)], pad), 0)
    np.testing.assert_allclose(by_text, want, rtol=1e-5, atol=1e-6)
    # read with an appended EOS instead, the cut rows score otherwise (the comparison above could fail)
    with_eos = gold.fn(prompts, [str(t) for t in texts])
    np.testing.assert_allclose(with_eos[[0, 2]], want[[0, 2]], rtol=1e-5, atol=1e-6)
    assert np.abs(with_eos[[1, 3]] - want[[1, 3]]).min() > 1e-3


def test_rm_gold_needs_a_finished_rm(tmp_path):
    ctx = build_context(micro(**{"data.gold": f"rm:{tmp_path / 'nothing'}"}), tmp_path / "w", use_wandb=False)
    with pytest.raises(UserError, match="no finished reward model"):
        gold_reward(ctx)


def test_rm_gold_judges_best_of_n_in_another_workdir(gold_workdir, tmp_path):
    c = micro(stages="sft,rm,bon", **{"data.gold": f"rm:{gold_workdir}", "rm.steps": 2, "bon.n_samples": 4,
                                      "bon.n_prompts": 4})
    summary = run_pipeline(c, tmp_path / "run", use_wandb=False)
    curve = json.loads((tmp_path / "run" / "bon" / "curve.json").read_text())
    assert np.isfinite(summary["bon"]["gold_best_of_N"]) and len(curve) == 3
    assert curve[0]["gold"] != curve[0]["proxy"]  # judged by the other run's RM, not this run's proxy


def test_a_gold_rm_with_the_runs_head_seed_is_refused(gold_workdir, tmp_path):
    # a run with its own reward model (stage rm listed) whose head seeds share one with the gold's:
    # seed 100 draws head 101, and so does member 1 of a 2-member ensemble at seed 99
    for sets in ({"seed": GOLD_SEED}, {"seed": GOLD_SEED - 1, "rm.members": 2}):
        ctx = build_context(micro(stages="sft,rm,bon", **{"data.gold": f"rm:{gold_workdir}", **sets}),
                            tmp_path / f"w{sets['seed']}", use_wandb=False)
        with pytest.raises(UserError, match=r"drew its score head from seed 101, as this run's reward model does"):
            gold_reward(ctx)
    # without a reward model of its own (DPO judged by the gold) the seed may be the gold's; a 1-member
    # run at seed 99 draws head 100, not the gold's 101
    for stages, seed in (("sft,dpo", GOLD_SEED), ("sft,rm,bon", GOLD_SEED - 1)):
        ctx = build_context(micro(stages=stages, **{"data.gold": f"rm:{gold_workdir}", "seed": seed}),
                            tmp_path / f"ok_{seed}_{stages}", use_wandb=False)
        assert isinstance(gold_reward(ctx), RMGoldReward)

