"""Self-Instruct (Wang et al. 2023): bootstrap new instructions from a seed pool, in rounds.

Each round:
1. `prompts_per_round` prompts, each showing k_seed seed tasks + k_machine tasks accepted in earlier
   rounds (`templates.draw_examples`), ask for `new_per_prompt` new tasks; the generations are parsed
   into candidate instructions (an output with none is one `malformed` candidate);
2. each candidate passes the instruction filters (`filters.instruction_filter`: length, start,
   keyword blocklist, exact/near duplicate, ROUGE-L > 0.7 against every instruction in the pool: the
   seeds, the accepted ones and those accepted earlier in this round);
3. the survivors are classified (a few-shot yes/no prompt over the seed tasks' labels), and one
   instance each is generated: input then output, or, for classification tasks, the class label first
   and then an input of that class (the paper's output-first generation);
4. an instance that cannot be parsed (`malformed_instance`), whose output is over `max_output_words`
   (`output_too_long`) or that fails the sft validator (`invalid_record`) is rejected, and its
   instruction leaves the pool again; the rest are kept.
A generation cut at `instruction_tokens` whose last task runs to its end loses that task
(`cut_at_token_limit`: it may stop mid-sentence), as the paper's code drops it; tasks beyond
`new_per_prompt` are not parsed.
Every candidate ends kept or with exactly one reason: kept + sum(rejected) == candidates.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import random
from typing import Any, Callable

from rlhf_jax.data.records import FieldError, ended_flags, validate_sft
from rlhf_jax.data.tokenize import Unfinished
from rlhf_jax.synth import templates
from rlhf_jax.synth.filters import DedupIndex, RougePool, instruction_filter, words
from rlhf_jax.synth.parse import parse_instance, parse_tasks, parse_yes_no, prompt_of

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunResult:
    """What a generation run produced: the kept records, the rejected candidates (each with its
    reason), and counts {'candidates', 'kept', 'rejected': {reason: n}}."""

    records: list[dict] = dataclasses.field(default_factory=list)
    rejected: list[dict] = dataclasses.field(default_factory=list)
    rounds: list[dict] = dataclasses.field(default_factory=list)

    def reject(self, reason: str, **fields) -> None:
        self.rejected.append({"reason": reason, **fields})

    def counts(self) -> dict[str, Any]:
        by = collections.Counter(r["reason"] for r in self.rejected)
        return {"candidates": len(self.records) + len(self.rejected), "kept": len(self.records),
                "rejected": dict(sorted(by.items()))}


def classification_shots(seeds: list[dict], n: int, rng: random.Random) -> list[dict]:
    """n seed tasks for the is-classification prompt, half of them classification tasks."""
    yes = [s for s in seeds if s["is_classification"]]
    no = [s for s in seeds if not s["is_classification"]]
    k = min(len(yes), n // 2)
    shots = rng.sample(yes, k) + rng.sample(no, min(len(no), n - k))
    rng.shuffle(shots)
    return shots


def instance_shots(seeds: list[dict], classification: bool, n: int, rng: random.Random) -> list[dict]:
    """n seed tasks of the same kind (classification or not) with their first instance."""
    same = [s for s in seeds if s["is_classification"] == classification] or seeds
    return [{"instruction": s["instruction"], **s["instances"][0]} for s in rng.sample(same, min(n, len(same)))]


def run_self_instruct(complete: Callable, seeds: list[dict], n: int, cfg,
                      max_candidates: int | None = None) -> RunResult:
    """Generate until `n` records are kept (or `max_candidates` candidates, or `max_rounds` rounds).
    `complete(prompts, max_new_tokens) -> texts` is the generator (`Generator.complete`)."""
    s, f = cfg.self_instruct, cfg.filters
    rng = random.Random(cfg.seed)
    pool, dedup = RougePool(), DedupIndex(f.near_dup_threshold)
    for t in seeds:
        pool.add(t["instruction"])
        dedup.add(t["instruction"])
    result, machine = RunResult(), []
    cls_shots = classification_shots(seeds, s.is_class_examples, rng)
    for rnd in range(s.max_rounds):
        if len(result.records) >= n or (max_candidates and result.counts()["candidates"] >= max_candidates):
            break
        before = result.counts()
        draws = [templates.draw_examples(seeds, machine, s.k_seed, s.k_machine, rng)
                 for _ in range(s.prompts_per_round)]
        prompts = [templates.self_instruct_prompt(ex, s) for ex in draws]
        outputs = complete(prompts, s.instruction_tokens)
        pending = []
        for j, (ex, (_, prefix), out) in enumerate(zip(draws, prompts, outputs)):
            prov = {"method": "self_instruct", "round": rnd, "prompt_index": j,
                    "prompt_examples": [e["id"] for e in ex]}
            tasks = parse_tasks(prefix + out, first=len(ex) + 1)
            if not tasks:
                result.reject("malformed", stage="instruction", generation=str(out), provenance=prov)
                continue
            # a generation cut at the token limit ends in a task cut mid-sentence (Self-Instruct drops it)
            runs_to_end = " ".join((prefix + out).split()).endswith(tasks[-1])
            cut = len(tasks) if isinstance(out, Unfinished) and runs_to_end else None
            for i, t in enumerate(tasks[:s.new_per_prompt], 1):
                if i == cut:
                    result.reject("cut_at_token_limit", stage="instruction", instruction=t, provenance=prov)
                    continue
                reason, detail = instruction_filter(t, f, dedup, pool)
                if reason:
                    result.reject(reason, stage="instruction", instruction=t, **detail, provenance=prov)
                    continue
                dedup.add(t)
                pool.add(t)
                pending.append({"instruction": t, "rouge_l": detail["rouge_l"], "provenance": prov})
        _instances(complete, pending, seeds, cls_shots, s, f, rng, result, dedup, pool, machine, rnd)
        after = result.counts()
        result.rounds.append({"round": rnd, "candidates": after["candidates"] - before["candidates"],
                              "kept": after["kept"] - before["kept"]})
        log.info("self_instruct round %d: %s", rnd, result.rounds[-1])
    return result


def _instances(complete, pending, seeds, cls_shots, s, f, rng, result, dedup, pool, machine, rnd) -> None:
    """Steps 3-4 of the module docstring for one round's surviving instructions."""
    if not pending:
        return
    answers = complete([templates.is_classification_prompt(p["instruction"], cls_shots, s) for p in pending],
                       s.class_tokens)
    prompts = []
    for p, answer in zip(pending, answers):
        p["is_classification"] = parse_yes_no(answer) is True
        shots = instance_shots(seeds, p["is_classification"], s.instance_examples, rng)
        prompts.append(templates.instance_prompt(p["instruction"], p["is_classification"], shots, s))
    outputs = complete(prompts, s.instance_tokens)
    for i, (p, (_, prefix), out) in enumerate(zip(pending, prompts, outputs)):
        inst, reason = parse_instance(prefix + out, p["is_classification"]), None
        if inst is None:
            reason = "malformed_instance"
        elif len(words(inst["output"])) > f.max_output_words:
            reason = "output_too_long"
        else:
            try:  # a generation cut at instance_tokens cuts the output only when the output comes last
                output_cut = isinstance(out, Unfinished) and not p["is_classification"]  # classification: output first
                record = validate_sft({"prompt": prompt_of(p["instruction"], inst["input"]),
                                       "completion": inst["output"], "ended": [not output_cut]})
            except FieldError as e:
                reason, detail = "invalid_record", str(e)
        if reason:
            extra = {"detail": detail} if reason == "invalid_record" else {}
            result.reject(reason, stage="instance", instruction=p["instruction"], generation=str(out),
                          is_classification=p["is_classification"], provenance=p["provenance"], **extra)
            dedup.remove(p["instruction"])
            pool.remove(p["instruction"])
            continue
        rid = f"si_r{rnd}_{i}"
        row = {**record, "ended": ended_flags([record["completion"]]), "id": rid, "instruction": p["instruction"],
               "input": inst["input"], "output": inst["output"], "is_classification": p["is_classification"],
               "rouge_l_to_pool": p["rouge_l"], "cut_at_token_limit": isinstance(out, Unfinished),
               "provenance": p["provenance"]}
        result.records.append(row)
        machine.append({"id": rid, "instruction": p["instruction"]})
