"""Stage "eval": evaluate one or more checkpoints on the suites `evaluate.suites` names.

Policies (`evaluate.policies`, "name=spec,..."): `stage:NAME` reads WORKDIR/NAME/final of
`evaluate.source` (default: this workdir), any other spec is a local HF directory or GGUF
file. Judges (`evaluate.judges`): `gold` (the task world's gold reward), `rm` (the trained
reward of the source workdir: single, ensemble or InfoRM), `llm` (an LLM-as-a-judge on
`evaluate.judge_model`: a path, or `policy:NAME` for one of the policies, which then also
gives its self-preference: `llm` judges pairs in both orders, `llm_rating` rates each
response 1-5 on its own). Writes WORKDIR/eval/: summary.json, report.md (per-example
tables), samples.jsonl, metrics.jsonl (and W&B), win_rates.png, and suites/NAME.json as
each suite finishes (`eval.suite_store`). A rerun recomputes only the suites without a file
made under the same `provenance` (the config fields the evaluation reads, the checkpoints it
loads). It changes no training stage.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rlhf_jax import checkpoint, distributed, signals
from rlhf_jax import workdir as workdirs
from rlhf_jax.data import corpora, synthetic
from rlhf_jax.data.run_data import read_source
from rlhf_jax.data.tokenize import decode_sampled, prompt_arrays
from rlhf_jax.eval.benchmarks import alpaca_eval_records
from rlhf_jax.eval.eval_report import flatten_numbers, plot_win_rates, write_eval_report
from rlhf_jax.eval.judges import FunctionJudge, LLMJudge
from rlhf_jax.eval.suite_store import SuiteStore, write_rows
from rlhf_jax.eval.suites import EVAL_SUITES, EvalEnv, Policy, collect_self_preference
from rlhf_jax.generate import SamplingConfig, sample_rows
from rlhf_jax.models import Model, load_pretrained
from rlhf_jax.registry import Registry
from rlhf_jax.rewards import score_texts
from rlhf_jax.stages.gold import gold_reward
from rlhf_jax.stages.handoff import policy_stages, sft_stage
from rlhf_jax.stages.registry import STAGES, register_stage, stage_reads
from rlhf_jax.stages.reward import reward_stages, trained_reward
from rlhf_jax.stages.sampling import ChunkStore, chunk_key, drop_kept_samples
from rlhf_jax.train.ppo import sequence_kl

# the judges `evaluate.judges` names: fn(ctx, policies) -> a judge (rlhf_jax.eval.judges)
JUDGES = Registry("judge")


def parse_policies(spec: str) -> dict[str, str]:
    out = {}
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        name, _, where = item.partition("=")
        if not name or not where:
            raise ValueError(f"evaluate.policies: {item!r} is not name=spec (spec: stage:NAME or a checkpoint path)")
        out[name] = where
    return out


def check(c, need) -> None:
    e = c.evaluate
    try:
        policies = parse_policies(e.policies)
    except ValueError as err:
        need(False, "evaluate.policies", str(err))
    bad = [s for s in e.suites.split(",") if s and s not in EVAL_SUITES]
    need(not bad, "evaluate.suites", f"{bad} are not among {EVAL_SUITES.names()}")
    judges = [j for j in e.judges.split(",") if j]
    need(all(j in JUDGES for j in judges), "evaluate.judges", f"{judges}: each must be one of {JUDGES.names()}")
    need(not policies or e.baseline in policies, "evaluate.baseline", f"{e.baseline!r} is not among {list(policies)}")
    need(not {"llm", "llm_rating"} & set(judges) or bool(e.judge_model), "evaluate.judge_model",
         "an llm judge needs a checkpoint (a path, or policy:NAME)")
    need(e.temperature >= 0, "evaluate.temperature", "must be >= 0 (0 = greedy)")


def needs(c) -> tuple[str, ...]:
    """The stages of this workdir the evaluation reads (none when it reads another workdir)."""
    if c.evaluate.source:
        return ()
    stages = [w[6:] for w in parse_policies(c.evaluate.policies).values() if w.startswith("stage:")]
    if "sft" in stages:  # stage:sft is the SFT policy: the candidate sft_select chose when it runs
        stages += list(policy_stages(c))
    if "rm" in c.evaluate.judges.split(","):
        stages += list(reward_stages(c))
    return tuple(dict.fromkeys(stages))


def _source(ctx) -> Path:
    return Path(ctx.config.evaluate.source).expanduser() if ctx.config.evaluate.source else ctx.workdir


def load_policy(ctx, name: str, spec: str) -> Policy:
    if spec.startswith("stage:"):
        stage = sft_stage(_source(ctx)) if spec[6:] == "sft" else spec[6:]  # as every stage reads the SFT policy
        params = checkpoint.load_final(_source(ctx), stage, ctx.base.params)
        return Policy(name, Model(ctx.base.cfg, "lm", ctx.base.graphdef, params), ctx.tokenizer)
    model, tokenizer = load_pretrained(Path(spec).expanduser(), mesh=ctx.mesh)
    if tokenizer is None:
        raise ValueError(f"evaluate.policies: {spec} has no tokenizer files")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Policy(name, model, tokenizer)


@JUDGES.register("gold")
def gold_judge(ctx, policies) -> FunctionJudge:
    """The gold reward (the task world's, or the classifier of stage clf) as a pointwise judge."""
    gold = gold_reward(ctx)
    if gold is None:
        raise ValueError("evaluate.judges: 'gold' needs the task world (data.source = synthetic)")
    return FunctionJudge(gold.fn)


@JUDGES.register("rm")
def rm_judge(ctx, policies=None) -> FunctionJudge:
    """The source workdir's trained reward as a pointwise judge of (prompt, response) texts."""
    reward, params, _, _ = trained_reward(ctx, "bon")
    if not hasattr(reward, "packed_values"):
        raise ValueError("evaluate.judges: the rm judge needs a reward model read at the last token (not a "
                         "fine-grained one)")
    tcfg, packed = ctx.data.tcfg, jax.jit(reward.packed_values)

    def scores(prompts, responses):  # the responses to one prompt packed after it once
        return score_texts(packed, params, ctx.tokenizer, tcfg, prompts, responses, ctx.config.evaluate.batch_size)

    return FunctionJudge(scores)


def llm_judge(ctx, policies: dict[str, Policy], pairwise: bool = True) -> LLMJudge:
    """An LLM (evaluate.judge_model: a path, or policy:NAME) judging pairs in both orders
    (`llm`), or rating each response 1-5 on its own, compared by the ratings' difference
    (`llm_rating`)."""
    e = ctx.config.evaluate
    p = (policies[e.judge_model[7:]] if e.judge_model.startswith("policy:")
         else load_policy(ctx, "judge", e.judge_model))
    return LLMJudge(p.model, p.tokenizer, chat=e.judge_chat or None, order_rule=e.judge_order_rule,
                    batch_size=max(1, e.batch_size // 4), **({} if pairwise else {"pairwise_template": None}))


JUDGES.register("llm", llm_judge)
JUDGES.register("llm_rating", lambda ctx, policies: llm_judge(ctx, policies, pairwise=False))


def build_judges(ctx, policies: dict[str, Policy]) -> dict[str, Any]:
    return {name: JUDGES[name](ctx, policies) for name in ctx.config.evaluate.judges.split(",") if name}


def generator(ctx, baseline: Policy):
    """policy, prompt records -> texts, lengths (tokens), EOS flags, KL to the baseline policy.
    Each finished chunk of samples is kept in WORKDIR/eval/chunks (stages/sampling.ChunkStore,
    keyed by the policy's name and the stage's provenance too): a stopped evaluation samples only
    what it had not finished."""
    e = ctx.config.evaluate
    inputs = json.dumps(provenance(ctx), sort_keys=True, default=str)

    def run(policy: Policy, records: list[dict]) -> dict:
        tok = policy.tokenizer
        if e.chat_prompts:  # an instruct model answers a user turn of its chat template
            records = [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} if isinstance(r["prompt"], str)
                       else r for r in records]
        arrays, _ = prompt_arrays(records, tok, ctx.data.tcfg)
        cfg = SamplingConfig(max_new_tokens=e.max_new_tokens or ctx.config.sampling.max_new_tokens,
                             temperature=e.temperature, eos_token_ids=(tok.eos_token_id,),
                             pad_token_id=tok.pad_token_id or 0)
        seed = ctx.config.seed * 53 + 11
        store = ChunkStore(ctx.workdir / "eval" / "chunks", chunk_key(
            arrays["tokens"], arrays["mask"], dataclasses.astuple(cfg), seed, e.batch_size, policy.name, inputs))
        s = sample_rows(policy.model.graphdef, policy.model.params, arrays["tokens"], arrays["mask"], 1, cfg,
                        seed=seed, chunk=e.batch_size, store=store)
        mask = s["response_mask"]
        texts, ended = decode_sampled(tok, s["response"], mask)  # the text judges read a cut one at its last token
        out = {"texts": texts, "lengths": mask.sum(1).astype(float), "eos": ended}
        if e.temperature > 0 and policy is not baseline and policy.model.graphdef == baseline.model.graphdef:
            kl = jax.jit(lambda p, q, *a: sequence_kl(policy.model.graphdef, p, q, *a, e.temperature))
            out["kl_to_baseline"] = np.concatenate([
                np.asarray(kl(policy.model.params, baseline.model.params, s["prompt"][i:i + e.batch_size],
                              s["prompt_mask"][i:i + e.batch_size], s["response"][i:i + e.batch_size],
                              mask[i:i + e.batch_size].astype(np.float32)))
                for i in range(0, len(mask), e.batch_size)])
        return out

    return run


def labelled_pairs(ctx) -> list[dict]:
    """Held-out pairs with human (or simulated-annotator) labels: {prompt, chosen, rejected}."""
    e = ctx.config.evaluate
    if e.pairs:
        records = read_source(e.pairs, "preference", ctx.config.data.policy)
    elif ctx.world is not None:
        records = synthetic.pair_records(ctx.world, e.n_pairs, "eval_pairs")
    else:
        records = ctx.data.records("rm_val")
    pairs = []
    for r in records:
        if "chosen" in r:
            pairs.append(r)
        else:  # a ranking: its best against its worst
            order = np.argsort(r["ranks"], kind="stable")
            pairs.append({"prompt": r["prompt"], "chosen": r["responses"][order[0]],
                          "rejected": r["responses"][order[-1]]})
    return pairs[-e.n_pairs:] if e.pairs else pairs[:e.n_pairs]


def environment(ctx) -> EvalEnv:
    e = ctx.config.evaluate
    policies = {name: load_policy(ctx, name, spec) for name, spec in parse_policies(e.policies).items()}
    suites = [s for s in e.suites.split(",") if s]
    prompts = []
    if "generation" in suites:
        prompts = (read_source(e.prompts, "prompt", ctx.config.data.policy) if e.prompts
                   else ctx.data.records("eval_prompts"))[:e.n_prompts]
    env = EvalEnv(policies, e.baseline, build_judges(ctx, policies), prompts, generator(ctx, policies[e.baseline]), e)
    if "perplexity" in suites:
        env.heldout = ctx.data.arrays("sft_val", pack=False)
    if {"judge_agreement", "rm_pairs"} & set(suites):
        env.pairs = labelled_pairs(ctx)
    if "truthfulqa" in suites:
        env.truthfulqa = corpora.truthfulqa()[0][:e.n_truthfulqa or None]
    if "alpaca_eval" in suites:
        env.alpaca, env.alpaca_load = alpaca_eval_records(e.n_alpaca)
    return env


def self_preference(results: dict, e) -> dict:
    """With an LLM judge that is one of the policies: its win rate for its own model's outputs
    minus a neutral judge's on the same pairs, per suite (`suites.collect_self_preference`)."""
    return collect_self_preference(results) if e.judge_model.startswith("policy:") else {}


def _file_identity(path: Path) -> str | None:
    """Size and modification time of a checkpoint file, or of each file of a checkpoint directory."""
    if not path.exists():
        return None
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def provenance(ctx) -> dict[str, Any]:
    """What every suite's results depend on besides the suite's own code: the config fields the
    stage reads (its block but `evaluate.suites`, sampling, seed, model, data, and what the stages
    it reads from read) and the identity of each checkpoint it loads (a stage of another workdir
    may have been run again since)."""
    c, e = ctx.config, ctx.config.evaluate
    reads, ignores = {"eval": stage_reads("eval", c)}, {"eval": STAGES["eval"].ignores + ("evaluate.suites",)}
    fields = {k: v for k, v in workdirs.flatten(c).items() if "eval" in workdirs.readers(k, reads, ignores)}
    judges, specs = e.judges.split(","), list(parse_policies(e.policies).values())
    stages = [w[6:] for w in specs if w.startswith("stage:")] + (list(reward_stages(c)) if "rm" in judges else [])
    inputs = {f"stage:{s}": checkpoint.summary_identity(_source(ctx), s) for s in stages}
    if "gold" in judges and c.data.gold == "clf":
        inputs["stage:clf"] = checkpoint.summary_identity(ctx.workdir, "clf")
    if "gold" in judges and c.data.gold.startswith("rm:"):
        inputs[c.data.gold] = checkpoint.summary_identity(Path(c.data.gold[3:]).expanduser(), "rm")
    paths = [w for w in specs if not w.startswith("stage:")]
    paths += [e.judge_model] if e.judge_model and not e.judge_model.startswith("policy:") else []
    inputs.update({w: _file_identity(Path(w).expanduser()) for w in paths})
    return {"config": fields, "inputs": inputs}


@register_stage("eval", block="evaluate", needs=needs, check=check, produces_params=False, reads=("sampling",),
                rerun=True)
def run(ctx) -> dict[str, Any]:
    """Each suite in turn, its results written to WORKDIR/eval/suites/ (and its example rows to
    samples.jsonl) as it finishes, or read back from there when a run under the same provenance
    made them; then the summary, metrics, report and figure of them all."""
    e = ctx.config.evaluate
    t0 = time.perf_counter()
    out = ctx.workdir / "eval"
    store = SuiteStore(out, provenance(ctx))
    env, results, rows = None, {}, {}
    for suite in [s for s in e.suites.split(",") if s]:
        signals.check("eval")
        stored = store.load(suite)
        if stored is not None:
            results[suite], rows[suite] = stored
            continue
        if env is None:  # built when a suite first runs: a rerun that reuses every suite loads no model
            env = environment(ctx)
        s0 = time.perf_counter()
        try:
            result, suite_rows = EVAL_SUITES[suite](env)
        except Exception as err:
            kept = (f"the finished suites ({', '.join(results)}) are in {store.directory}; rerunning reuses them"
                    if results else "no suite had finished")
            print(f"[eval] suite {suite}: failed ({type(err).__name__}); {kept}", flush=True)
            if hasattr(err, "add_note"):  # Python >= 3.11 (on 3.10 the line above names the suite)
                err.add_note(f"in evaluation suite {suite!r} ({kept})")
            raise
        result["seconds"] = time.perf_counter() - s0
        results[suite], rows[suite] = store.save(suite, result, suite_rows)
        write_rows(out / "samples.jsonl", rows)
        print(f"[eval] {suite}: {result['seconds']:.1f}s -> {store.path(suite)}", flush=True)
    if self_preference(results, e):
        results["self_preference"] = self_preference(results, e)
    judges = list(dict.fromkeys(j for j in e.judges.split(",") if j))  # as build_judges names them
    summary = {"policies": parse_policies(e.policies), "baseline": e.baseline, "judges": judges, **results,
               "wall_seconds": time.perf_counter() - t0}
    write_rows(out / "samples.jsonl", rows)  # the reused suites' rows too
    writer = ctx.writer("eval", ())
    writer.write(0, flatten_numbers(results))
    writer.close()
    if distributed.primary():
        plot_win_rates(out / "win_rates.png", results)
        write_eval_report(out / "report.md", summary, rows)
    checkpoint.save_final(ctx.workdir, "eval", None, summary)
    drop_kept_samples(ctx, "eval", "chunks")
    return summary
