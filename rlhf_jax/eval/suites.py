"""Evaluation suites: each a registered function of an `EvalEnv` (the policies, the judges, the
prompts and the settings) returning (results, per-example rows).

    generation       every policy sampled on the same prompts: length, EOS rate, distinct-n,
                     repetition, ROUGE/BLEU/exact match and MAUVE when the prompts carry
                     references, KL to the baseline, each judge's scores, paired win rates over
                     the baseline with intervals, and each judge's verbosity (and position) bias
                     on those pairs
    perplexity       held-out demonstration NLL per token and perplexity of every policy
    truthfulqa       MC1 / MC2 of every policy, in each configured prompt format
    alpaca_eval      win rate and length-controlled win rate against the reference outputs
                     (lengths in characters; the instruction difficulty fitted across the
                     policies), under every judge that reads text, with the judges' biases and
                     the records skipped on loading
    judge_agreement  every judge against human (or simulated-annotator) labels on held-out
                     pairs: accuracy, Cohen's kappa, and "the longer / shorter wins" baselines
    rm_pairs         the trained reward's held-out pair accuracy with its interval, how much
                     length alone explains (the shorter-wins rule, the correlation of the
                     score difference with the length difference)

Every win rate and accuracy is an `eval.stats.Estimate` (value, 95% bootstrap interval, n).
Lengths are words in the task-world suites and characters in alpaca_eval (as AlpacaEval).

Self-preference: when `evaluate.judge_model` is `policy:NAME`, the llm judges are that policy's
own model. The generation and alpaca_eval suites then report, under "self_preference", each
self judge's win rate for NAME's outputs minus a neutral judge's (gold, rm) on the same pairs,
with a paired bootstrap interval (`reliability.self_preference`); without a neutral judge
they say it is not measurable.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np

from rlhf_jax.eval import benchmarks, metrics, reliability, scoring, stats
from rlhf_jax.registry import Registry

EVAL_SUITES = Registry("evaluation suite")


@dataclasses.dataclass
class Policy:
    name: str
    model: Any  # rlhf_jax.models.Model (LM head)
    tokenizer: Any


@dataclasses.dataclass
class EvalEnv:
    policies: dict[str, Policy]
    baseline: str
    judges: dict[str, Any]  # name -> Judge (score / compare)
    prompts: list[dict]  # {"prompt", optional "reference"}
    generate: Callable[[Policy, list[dict]], dict]  # -> {"texts", "lengths", "eos", "kl_to_baseline"?}
    settings: Any  # the config's `evaluate` block
    heldout: dict | None = None  # SFT-style arrays of held-out demonstrations (perplexity)
    pairs: list[dict] | None = None  # {"prompt", "chosen", "rejected"} labelled pairs
    truthfulqa: list[dict] | None = None
    alpaca: list[dict] | None = None
    alpaca_load: dict | None = None  # what loading the AlpacaEval records skipped (benchmarks.alpaca_eval_records)
    samples: dict[str, dict] = dataclasses.field(default_factory=dict)  # generation cache per policy

    def sampled(self, policy: str) -> dict:
        if policy not in self.samples:
            self.samples[policy] = self.generate(self.policies[policy], self.prompts)
        return self.samples[policy]

    def boot(self) -> dict:
        return {"n_resamples": self.settings.bootstrap, "seed": 0}


SELF_JUDGES = ("llm", "llm_rating")  # the judges built on evaluate.judge_model
MAUVE_MIN_SAMPLES = 20  # MAUVE quantises features into about n / 10 clusters; fewer samples give noise
# (12 copies of one set against themselves score 0.75, not 1)


def _length(text: str) -> int:
    """Words: the task world's responses are word sequences (alpaca_eval counts characters)."""
    return len(text.split())


def own_policy(env: EvalEnv) -> str | None:
    """The policy whose model the llm judges run on (judge_model "policy:NAME"), or None."""
    spec = getattr(env.settings, "judge_model", "") or ""
    return spec[len("policy:"):] if spec.startswith("policy:") else None


def self_preference(env: EvalEnv, verdicts: dict[str, np.ndarray]) -> dict | None:
    """Self-preference of the llm judges for their own policy's outputs on one suite's pairs.

    verdicts: judge -> p(own policy's output better) on the same pairs. For each self judge
    and each neutral judge: `reliability.self_preference` (both win rates and their paired
    difference, prompts resampled). None when the llm judges are not one of the policies.
    """
    own, mine = own_policy(env), [j for j in verdicts if j in SELF_JUDGES]
    if own is None or not mine:
        return None
    neutral = [j for j in verdicts if j not in SELF_JUDGES]
    out: dict[str, Any] = {"policy": own}
    for js in mine:
        for jn in neutral:
            out[f"{js}_minus_{jn}"] = reliability.self_preference(verdicts[js], verdicts[jn], **env.boot())
    if not neutral:
        out["not_measurable"] = ("no neutral judge (gold, rm or another model) judged these pairs: "
                                 "a self-judged win rate alone cannot separate self-preference from quality")
    return out


def collect_self_preference(results: dict) -> dict:
    """{"policy", suite: {self judge minus neutral judge: paired difference Estimate}} over the suites."""
    out = {}
    for suite, res in results.items():
        sp = res.get("self_preference") if isinstance(res, dict) else None
        if sp:
            out["policy"] = sp["policy"]
            out[suite] = {k: v["self_preference"] if isinstance(v, dict) else v for k, v in sp.items() if k != "policy"}
    return out


def _mauve(env: EvalEnv, prompt_text: list[str], texts: list[str], ref_features) -> float:
    """MAUVE of prompt + response against prompt + reference, on the baseline policy's features."""
    fp = env.policies[env.baseline]
    feats = scoring.text_features(fp.model, fp.tokenizer, [p + " " + t for p, t in zip(prompt_text, texts)],
                                  batch_size=env.settings.batch_size)
    return metrics.mauve_score(feats, ref_features)


@EVAL_SUITES.register("generation")
def generation(env: EvalEnv) -> tuple[dict, list[dict]]:
    prompts = [p["prompt"] for p in env.prompts]
    prompt_text = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
    refs = [p.get("reference") for p in env.prompts]
    out, scores = {"n_prompts": len(prompts)}, {}
    t0 = time.perf_counter()
    ref_features = None
    if all(r is not None for r in refs) and len(refs) >= MAUVE_MIN_SAMPLES:
        fp = env.policies[env.baseline]  # one featuriser for every policy: the scores are comparable
        ref_features = scoring.text_features(fp.model, fp.tokenizer, [p + " " + r for p, r in zip(prompt_text, refs)],
                                             batch_size=env.settings.batch_size)
        out["mauve_features"] = f"{env.baseline}: last-token final hidden state of prompt + text"
    for name in env.policies:
        s = env.sampled(name)
        texts = s["texts"]
        row = {"response_length": stats.mean(s["lengths"], **env.boot()).to_dict(),
               "eos_rate": stats.mean(s["eos"].astype(float), **env.boot()).to_dict(),
               "distinct_1": metrics.distinct_n(texts, 1), "distinct_2": metrics.distinct_n(texts, 2),
               "repetition_rate_3": stats.mean(metrics.repetition_rate(texts, 3), **env.boot()).to_dict()}
        if all(r is not None for r in refs):
            row["rougeL"] = stats.mean(metrics.rouge(texts, refs, types=("rougeL",))["rougeL"], **env.boot()).to_dict()
            row["bleu"] = metrics.bleu(texts, refs)
            row["exact_match"] = stats.accuracy(metrics.exact_match(texts, refs), **env.boot()).to_dict()
        if ref_features is not None:
            row["mauve"] = _mauve(env, prompt_text, texts, ref_features)
        if s.get("kl_to_baseline") is not None:
            row["kl_to_baseline"] = stats.mean(s["kl_to_baseline"], **env.boot()).to_dict()
        for judge_name, judge in env.judges.items():
            scores[(judge_name, name)] = np.asarray(judge.score(prompts, texts), np.float64)
            row[f"score_{judge_name}"] = stats.mean(scores[(judge_name, name)], **env.boot()).to_dict()
        out[name] = row
    base, own, own_verdicts = env.sampled(env.baseline), own_policy(env), {}
    for judge_name, judge in env.judges.items():
        for name in env.policies:
            if name == env.baseline:
                continue
            a, b = env.sampled(name)["texts"], base["texts"]
            verdicts = np.asarray(judge.compare(prompts, a, b), np.float64)
            if name == own:
                own_verdicts[judge_name] = verdicts
            out.setdefault(f"win_rate_vs_{env.baseline}", {}).setdefault(judge_name, {})[name] = \
                stats.win_rate(verdicts, **env.boot()).to_dict()
            try:
                bias = reliability.verbosity_bias(verdicts, [_length(t) for t in a], [_length(t) for t in b],
                                                  **env.boot())
            except ValueError as err:  # every pair of equal length (both cut at max_new_tokens): no bias to measure
                bias = {"not_measured": str(err)}
            if getattr(judge, "pairwise", False):
                bias.update(reliability.judge_position_bias(judge.prefer_first, prompts, a, b, **env.boot()))
            out.setdefault("judge_bias", {}).setdefault(judge_name, {})[name] = bias
    if self_preference(env, own_verdicts):
        out["self_preference"] = self_preference(env, own_verdicts)
    out["examples_per_second"] = len(prompts) * len(env.policies) / max(time.perf_counter() - t0, 1e-9)
    rows = []
    for i in range(min(env.settings.n_report, len(prompts))):
        row = {"prompt": prompt_text[i], **({"reference": refs[i]} if refs[i] is not None else {})}
        for name in env.policies:
            row[name] = env.sampled(name)["texts"][i]
            for judge_name in env.judges:
                row[f"{name}/{judge_name}"] = float(scores[(judge_name, name)][i])
        rows.append(row)
    return out, rows


@EVAL_SUITES.register("perplexity")
def perplexity(env: EvalEnv) -> tuple[dict, list[dict]]:
    out = {}
    for name, p in env.policies.items():
        nll_N, count_N = metrics.heldout_nll(p.model, env.heldout["tokens"], env.heldout["loss_mask"],
                                             env.heldout["segment_ids"], batch_size=env.settings.batch_size)
        per_token = nll_N / np.maximum(count_N, 1)
        out[name] = {"perplexity": metrics.perplexity(nll_N.sum(), count_N.sum()),
                     "nll_per_token": stats.mean(per_token, **env.boot()).to_dict(), "n": int(len(nll_N))}
    return out, []


@EVAL_SUITES.register("truthfulqa")
def truthfulqa(env: EvalEnv) -> tuple[dict, list[dict]]:
    out, rows = {}, []
    for fmt in [f for f in env.settings.truthfulqa_formats.split(",") if f]:
        for name, p in env.policies.items():
            t0 = time.perf_counter()
            res = benchmarks.truthfulqa_mc(p.model, p.tokenizer, env.truthfulqa, prompt_format=fmt,
                                           batch_size=env.settings.batch_size, **env.boot())
            out.setdefault(fmt, {})[name] = {"mc1": res["mc1"], "mc2": res["mc2"], "n": res["n"],
                                             "items_per_second": res["n"] / (time.perf_counter() - t0)}
            rows += [{"format": fmt, "policy": name, **{k: r[k] for k in ("question", "mc1", "mc2")}}
                     for r in res["per_item"][:env.settings.n_report]]
    return out, rows


@EVAL_SUITES.register("alpaca_eval")
def alpaca_eval(env: EvalEnv) -> tuple[dict, list[dict]]:
    records = env.alpaca
    prompts, refs = [r["prompt"] for r in records], [r["reference"] for r in records]
    out, rows, texts = {"n": len(records), "records": env.alpaca_load or {"evaluated": len(records)}}, [], {}
    for name, p in env.policies.items():
        t0 = time.perf_counter()
        texts[name] = env.generate(p, [{"prompt": r["prompt"]} for r in records])["texts"]
        out.setdefault("generation_examples_per_second", {})[name] = len(records) / max(time.perf_counter() - t0, 1e-9)
        rows += [{"policy": name, "prompt": r["prompt"], "output": t, "reference": r["reference"]}
                 for r, t in list(zip(records, texts[name]))[:env.settings.n_report]]
    own, own_verdicts = own_policy(env), {}
    for judge_name, judge in env.judges.items():
        per_policy = benchmarks.alpaca_eval_policies(judge, records, texts, length=len, **env.boot())
        for name, res in per_policy.items():
            prefs = np.asarray(res.pop("preferences"))
            if name == own:
                own_verdicts[judge_name] = prefs
            res["judge_bias"] = reliability.verbosity_bias(prefs, [len(t) for t in texts[name]],
                                                           [len(r) for r in refs], **env.boot())
            if getattr(judge, "pairwise", False):
                res["judge_bias"].update(reliability.judge_position_bias(judge.prefer_first, prompts, texts[name],
                                                                         refs, **env.boot()))
            out.setdefault(judge_name, {})[name] = res
    if self_preference(env, own_verdicts):
        out["self_preference"] = self_preference(env, own_verdicts)
    return out, rows


@EVAL_SUITES.register("judge_agreement")
def judge_agreement(env: EvalEnv) -> tuple[dict, list[dict]]:
    prompts, a, b, human = reliability.hh_pairs(env.pairs, seed=0)
    la, lb = np.array([_length(x) for x in a]), np.array([_length(x) for x in b])
    longer = np.where(la == lb, 0.5, (la > lb).astype(float))
    out = {"n": len(prompts), "baselines": {
        "longer_wins": reliability.human_agreement(longer, human, **env.boot()),
        "shorter_wins": reliability.human_agreement(1 - longer, human, **env.boot())}}
    for name, judge in env.judges.items():
        verdicts = np.asarray(judge.compare(prompts, a, b), np.float64)
        out[name] = {**reliability.human_agreement(verdicts, human, **env.boot()),
                     "verbosity": reliability.verbosity_bias(verdicts, la, lb, **env.boot())}
    return out, []


@EVAL_SUITES.register("rm_pairs")
def rm_pairs(env: EvalEnv) -> tuple[dict, list[dict]]:
    judge = env.judges["rm"]
    prompts, n = [r["prompt"] for r in env.pairs], len(env.pairs)
    # in one call: a judge that packs each prompt once scores a pair's two responses after one prompt
    both = np.asarray(judge.score(prompts + prompts, [r["chosen"] for r in env.pairs]
                                  + [r["rejected"] for r in env.pairs]), np.float64)
    chosen, rejected = both[:n], both[n:]
    d_len = np.array([_length(r["chosen"]) - _length(r["rejected"]) for r in env.pairs], np.float64)
    correct = (chosen > rejected) + 0.5 * (chosen == rejected)
    shorter = (d_len < 0) + 0.5 * (d_len == 0)
    corr = float(np.corrcoef(chosen - rejected, d_len)[0, 1]) if d_len.std() > 0 else float("nan")
    return {"accuracy": stats.accuracy(correct, **env.boot()).to_dict(),
            "shorter_wins_accuracy": stats.accuracy(shorter, **env.boot()).to_dict(),
            "score_length_correlation": corr, "n": int(len(correct))}, []
