"""Which comparisons to send to the annotators: `batch --select STRATEGY --rm WORKDIR --budget N`.

The K responses of each prompt make C(K, 2) candidate comparisons; the reward-model ensemble
of a finished run (`WORKDIR/rm`, k >= 1 members) scores every response, and a strategy of
`rlhf_jax.data.active.SELECTION_STRATEGIES` (random, uncertainty, disagreement,
diverse_disagreement: docs/rlhf_notes.md section 12) picks `budget` of them. Each pick becomes
a ranking item of K = 2 (a pair) whose meta records the strategy, its score and the pick's
order. The `active` stage runs the same strategies in rounds on the task world.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rlhf_jax.data import active
from rlhf_jax.errors import UserError


def reward_scorer(workdir: str | Path):
    """score(items) -> member scores [k, P, K] of the items' responses under WORKDIR's trained RM
    (its k members on the run's base model with a scalar head, tokenised as the run's pairs)."""
    import jax

    from rlhf_jax import checkpoint
    from rlhf_jax import sharding as shd
    from rlhf_jax.context import base_model
    from rlhf_jax.data.tokenize import TokenizeConfig, ranking_arrays
    from rlhf_jax.models import init_model
    from rlhf_jax.rewards import EnsembleReward
    from rlhf_jax.stages.handoff import load_members
    from rlhf_jax.workdir import stored_config

    workdir = Path(workdir).expanduser()
    stored = workdir / "config.json"
    summary = checkpoint.read_summary(workdir, "rm") if stored.is_file() else None
    if summary is None:
        raise UserError(f"--rm {workdir}: no finished reward model there (a run directory whose stage rm has "
                        "finished: WORKDIR/config.json and WORKDIR/rm/final)")
    config = stored_config(workdir)
    if config.rm.head != "scalar":
        raise UserError(f"--rm {workdir}: rm.head = {config.rm.head!r}; selection reads scalar-head reward models")
    mesh = shd.make_mesh(shd.MeshConfig())
    base, tokenizer = base_model(config, mesh)
    scalar = init_model(base.cfg, head="scalar", seed=0, mesh=mesh)
    params = load_members(workdir, "rm", scalar.params, int(summary.get("members", 1)))
    reward = EnsembleReward(scalar.graphdef, lambda s: s.mean(0))
    tcfg = TokenizeConfig(max_len=config.data.max_len, max_prompt_len=config.data.max_prompt_len,
                          template=config.data.template or None)
    member_scores = jax.jit(reward.member_scores)

    def score(items: list[dict]) -> np.ndarray:
        records = [{"prompt": it["prompt"], "responses": it["responses"], "ranks": list(range(len(it["responses"])))}
                   for it in items]
        arrays, _ = ranking_arrays(records, tokenizer, tcfg)
        return active.member_scores(member_scores, params, arrays["tokens"], arrays["mask"])

    return score


def select_pairs(items: list[dict], member_scores, strategy: str, budget: int, seed: int = 0,
                 per_cluster: int = 1) -> tuple[list[dict], dict]:
    """Ranking items of K responses -> the chosen comparisons as items of 2 responses, first pick
    first. member_scores [k, P, K] of the items' responses; clusters are the prompts (the capped
    strategy takes at most `per_cluster` pairs of one prompt)."""
    if strategy not in active.SELECTION_STRATEGIES:
        raise UserError(f"--select {strategy}: unknown; valid: {', '.join(active.SELECTION_STRATEGIES.names())}")
    ks = {len(it["responses"]) for it in items}
    if len(ks) != 1 or min(ks) < 2:
        raise UserError(f"--select needs every item to hold the same K >= 2 responses; got K in {sorted(ks)}")
    K = ks.pop()
    scores = np.asarray(member_scores)
    if scores.shape[1:] != (len(items), K):
        raise ValueError(f"member scores {scores.shape} do not match {len(items)} items of {K} responses")
    candidates = active.candidate_pairs(len(items), K)
    try:
        picked = active.select(strategy, candidates, scores, budget, np.random.default_rng(seed),
                               per_cluster=per_cluster)
    except ValueError as e:  # e.g. disagreement over one reward model
        raise UserError(f"--select {strategy}: {e}") from None
    out = []
    for order, (c, s) in enumerate(zip(picked.chosen, picked.scores)):
        p, i, j = (int(x) for x in candidates[c])
        item = items[p]
        meta = dict(item.get("meta") or {}, selection={"strategy": strategy, "score": float(s), "order": order,
                                                       "responses": [i, j], "members": int(scores.shape[0])})
        out.append({"prompt": item["prompt"], "responses": [item["responses"][i], item["responses"][j]], "meta": meta})
    return out, {"strategy": strategy, "candidates": len(candidates), "selected": len(out),
                 "members": int(scores.shape[0])}
