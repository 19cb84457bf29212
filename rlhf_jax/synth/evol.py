"""Evol-Instruct (Xu et al. 2023): rewrite instructions into harder ones, in rounds.

Each round, every instruction of the current pool gets one operation drawn (seeded) from
`evol_instruct.operations`: an in-depth rewrite (add_constraints, deepening, concretizing,
increased_reasoning: the `depth` template with that method) or in-breadth mutation (`breadth`: a new
prompt in the same domain). The rewrite is parsed (`parse.parse_rewrite`; empty: `malformed`; one that
runs into `rewrite_tokens`: `cut_at_token_limit`), checked against elimination rule 3
(`copies_template`), `rewrite_is_reply` and rule 1 (`no_new_information`) before a response is
generated (a response would be wasted on it), then answered, and the response checked against rule 2
(`refusal`, `response_too_short`); see `filters.py` for each rule's exact test.

A successful evolution is kept as an sft record (prompt = evolved instruction, completion = the
response) and replaces its parent in the pool for the next round; a failed one is rejected with its
reason and its parent stays in the pool, to be evolved again next round (as the paper puts failed
instructions back). Every attempt ends kept or with exactly one reason.
"""
from __future__ import annotations

import logging
import random
from typing import Callable

from rlhf_jax.data.records import FieldError, ended_flags, validate_sft
from rlhf_jax.data.tokenize import Unfinished
from rlhf_jax.synth import templates
from rlhf_jax.synth.filters import copies_template, evol_rule, no_new_information, rewrite_is_reply
from rlhf_jax.synth.parse import parse_rewrite
from rlhf_jax.synth.self_instruct import RunResult

log = logging.getLogger(__name__)


def run_evol_instruct(complete: Callable, instructions: list[dict], rounds: int, cfg) -> RunResult:
    """Evolve `instructions` ([{id, prompt}]) for `rounds` rounds with `complete(prompts, max_new_tokens)`."""
    e = cfg.evol_instruct
    for op in e.operations:  # an unknown operation fails before any generation
        templates.evol_prompt("x", op, e)
    rng = random.Random(cfg.seed)
    current = [{"id": x["id"], "prompt": x["prompt"], "root": x["id"], "depth": 0} for x in instructions]
    result = RunResult()
    for rnd in range(rounds):
        before = result.counts()
        ops = [rng.choice(list(e.operations)) for _ in current]
        outputs = complete([templates.evol_prompt(x["prompt"], op, e) for x, op in zip(current, ops)],
                           e.rewrite_tokens)
        nxt, answer = [], []
        for i, (x, op, out) in enumerate(zip(current, ops, outputs)):
            prov = {"method": "evol_instruct", "round": rnd, "operation": op, "parent": x["id"],
                    "parent_prompt": x["prompt"], "root": x["root"], "depth": x["depth"] + 1}
            evolved = parse_rewrite(out)
            reason = None
            if evolved is None:
                reason = "malformed"
            elif isinstance(out, Unfinished) and " ".join(out.split()).endswith(evolved):
                reason = "cut_at_token_limit"  # the rewrite runs into the token limit: it may stop mid-sentence
            elif copies_template(evolved, e.template_words):
                reason = "copies_template"
            elif rewrite_is_reply(evolved, e.refusals, e.reply_openers):
                reason = "rewrite_is_reply"
            elif no_new_information(x["prompt"], evolved, e.same_rouge, e.min_new_words):
                reason = "no_new_information"
            if reason:
                result.reject(reason, stage="rewrite", evolved=evolved, generation=str(out), provenance=prov)
                nxt.append(x)
            else:
                answer.append((i, x, evolved, prov))
        responses = complete([templates.response_prompt(ev, e.response_system) for _, _, ev, _ in answer],
                             e.response_tokens)
        for (i, x, evolved, prov), response in zip(answer, responses):
            reason = evol_rule(x["prompt"], evolved, response.strip(), e)
            if reason is None:
                try:  # a response cut at response_tokens is kept, marked: SFT learns it without an EOS
                    record = validate_sft({"prompt": evolved, "completion": response.strip(),
                                           "ended": [not isinstance(response, Unfinished)]})
                except FieldError as err:
                    reason, prov = "invalid_record", {**prov, "detail": str(err)}
            if reason:
                result.reject(reason, stage="response", evolved=evolved, response=str(response), provenance=prov)
                nxt.append(x)
                continue
            rid = f"evol_r{rnd}_{i}"
            result.records.append({**record, "ended": ended_flags([record["completion"]]), "id": rid,
                                   "cut_at_token_limit": isinstance(response, Unfinished), "provenance": prov})
            nxt.append({"id": rid, "prompt": evolved, "root": x["root"], "depth": x["depth"] + 1})
        current = nxt
        after = result.counts()
        result.rounds.append({"round": rnd, "candidates": after["candidates"] - before["candidates"],
                              "kept": after["kept"] - before["kept"]})
        log.info("evol_instruct round %d: %s", rnd, result.rounds[-1])
    return result
