"""The Self-Instruct and Evol-Instruct loops on a scripted generator: every candidate's fate by hand."""
import collections

import pytest

from configs.generate_data import get_config
from rlhf_jax.synth.evol import run_evol_instruct
from rlhf_jax.synth.self_instruct import run_self_instruct

SEEDS = [
    {"id": "seed_a", "instruction": "Give three tips for staying healthy and fit.",
     "instances": [{"input": "", "output": "Eat well, sleep, move."}], "is_classification": False},
    {"id": "seed_b", "instruction": "Is the following review positive or negative?",
     "instances": [{"input": "Great film.", "output": "Positive"}], "is_classification": True},
    {"id": "seed_c", "instruction": "Translate the sentence into Spanish.",
     "instances": [{"input": "Good morning.", "output": "Buenos dias."}], "is_classification": False},
    {"id": "seed_d", "instruction": "Which of these animals is a mammal?",
     "instances": [{"input": "shark, dolphin", "output": "dolphin"}], "is_classification": True},
]

# what the scripted model writes after "Task 4:" (k = 3 examples), per round and prompt
TASKS = {
    (0, 0): " Classify the sentiment of this movie review as positive or negative.\n"
            "Task 5: Draw a picture of a dog.\nTask 6: Hi.",
    (0, 1): " Write a poem about the moon and the stars.\nTask 5: write a poem about the MOON and the stars.\n"
            "Task 6: Explain how tides form in the ocean.\nTask 7: Give three tips for staying healthy.",
    (1, 0): "\n\nTask 3: a number that does not follow",  # no task after the prefix: malformed
    (1, 1): " Summarize the causes of the French Revolution.\nTask 5: Explain how tides form in the ocean.",
}


class Scripted:
    """A stand-in for Generator.complete: answers by the prompt's prefix, and records what it was asked."""

    def __init__(self):
        self.calls, self.round, self.seen_tides = [], -1, False

    def __call__(self, prompts, max_new_tokens):
        self.calls.append((prompts, max_new_tokens))
        out = []
        for j, (messages, prefix) in enumerate(prompts):
            user = messages[-1]["content"]
            if prefix.startswith("Task"):
                if j == 0:
                    self.round += 1
                out.append(TASKS[self.round, j])
            elif prefix == "Is it classification?":
                out.append(" Yes" if "sentiment" in user.rsplit("Task:", 1)[1] else " No")
            elif prefix == "Class label:":
                out.append(" Positive\nInput: What a lovely film.")
            elif "tides" in user.rsplit("Task:", 1)[1] and not self.seen_tides:
                self.seen_tides = True
                out.append(" the tides")  # no Output: a malformed instance
            else:
                out.append(" <noinput>\nOutput: A generated answer.")
        return out


def small_config():
    c = get_config()
    c.self_instruct.update(k_seed=2, k_machine=1, prompts_per_round=2, new_per_prompt=4, max_rounds=2,
                           is_class_examples=2, instance_examples=1)
    return c


@pytest.fixture(scope="module")
def si():
    gen = Scripted()
    return run_self_instruct(gen, SEEDS, n=100, cfg=small_config()), gen


def test_every_candidate_is_kept_or_rejected_once(si):
    result, _ = si
    c = result.counts()
    # round 0: 3 + 4 candidates, round 1: 1 malformed output + 2 tasks
    assert c["candidates"] == 10 and c["kept"] == 4
    assert c["rejected"] == {"blocked_keyword": 1, "too_short": 1, "exact_duplicate": 1, "malformed_instance": 1,
                             "rouge_similar": 1, "malformed": 1}
    assert c["kept"] + sum(c["rejected"].values()) == c["candidates"]
    assert result.rounds == [{"round": 0, "candidates": 7, "kept": 2}, {"round": 1, "candidates": 3, "kept": 2}]
    reasons = collections.Counter((r["reason"], r.get("instruction")) for r in result.rejected)
    assert reasons[("blocked_keyword", "Draw a picture of a dog.")] == 1
    assert reasons[("rouge_similar", "Give three tips for staying healthy.")] == 1


def test_kept_records_are_valid_sft_with_provenance(si):
    result, _ = si
    by = {r["instruction"]: r for r in result.records}
    assert set(by) == {"Classify the sentiment of this movie review as positive or negative.",
                       "Write a poem about the moon and the stars.", "Summarize the causes of the French Revolution.",
                       "Explain how tides form in the ocean."}
    poem = by["Write a poem about the moon and the stars."]
    assert poem["prompt"] == poem["instruction"] and poem["completion"] == "A generated answer."
    assert poem["provenance"]["method"] == "self_instruct" and poem["provenance"]["round"] == 0
    assert len(poem["provenance"]["prompt_examples"]) == 3
    assert all(e.startswith("seed_") for e in poem["provenance"]["prompt_examples"])  # no machine task yet
    late = by["Summarize the causes of the French Revolution."]["provenance"]
    # round 1 shows 2 seeds + 1 task accepted in round 0 (the bootstrapping loop)
    assert late["round"] == 1 and [e[:3] for e in late["prompt_examples"]] == ["see", "see", "si_"]


def test_classification_task_is_generated_output_first(si):
    result, gen = si
    cls = next(r for r in result.records if r["is_classification"])
    assert cls["instruction"].startswith("Classify the sentiment")
    assert cls["output"] == "Positive" and cls["input"] == "What a lovely film."
    assert cls["prompt"] == cls["instruction"] + "\n\nWhat a lovely film." and cls["completion"] == "Positive"
    prefixes = [p for prompts, _ in gen.calls for _, p in prompts]
    assert prefixes.count("Class label:") == 1
    assert sum(not r["is_classification"] for r in result.records) == 3


def test_an_instruction_whose_instance_failed_leaves_the_pool(si):
    result, _ = si
    # "Explain how tides..." failed its instance in round 0, so in round 1 it is new again, not a duplicate
    tides = [r for r in result.rejected if r.get("instruction") == "Explain how tides form in the ocean."]
    assert [r["reason"] for r in tides] == ["malformed_instance"]
    assert any(r["instruction"] == "Explain how tides form in the ocean." for r in result.records)


def test_stops_at_n_kept():
    result = run_self_instruct(Scripted(), SEEDS, n=2, cfg=small_config())
    assert len(result.rounds) == 1 and result.counts()["kept"] == 2


class EvolScripted:
    """Rewrites by the instruction it is given; answers by the evolved prompt."""

    REWRITES = {
        "Name a fruit.": ["Name a tropical fruit that grows in Brazil and explain how it is eaten.",
                          "Name a tropical fruit that grows in Brazil and explain how it is eaten, and give its "
                          "season."],
        "Write a poem about the sea.": ["#Rewritten Prompt#: Write a poem about the sea at night."],
        "Describe a cat.": ["Describe a cat.\n\nA cat is an animal."],
        "Explain gravity.": ["Explain gravity to a ten year old using an example with apples and the Moon."],
        "Say hello.": ["Sure, I'd be happy to help with that."],
    }

    def __init__(self):
        self.n = collections.Counter()

    def __call__(self, prompts, max_new_tokens):
        out = []
        for messages, prefix in prompts:
            text = messages[-1]["content"]
            if "#The Given Prompt#:" in text:
                given = text.split("#The Given Prompt#:\n")[1].split("\n#")[0]
                options = self.REWRITES.get(given, ["Apples grow on trees in many orchards across Europe."])
                out.append(" " + options[min(self.n[given], len(options) - 1)])
                self.n[given] += 1
            elif "gravity" in text:
                out.append("Sorry, I cannot explain that.")
            else:
                out.append("It is a juicy fruit that people peel and eat fresh in summer.")
        return out


def test_evol_rounds_rules_and_provenance():
    cfg = get_config()
    cfg.evol_instruct.operations = ("add_constraints",)
    inputs = [{"id": "f", "prompt": "Name a fruit."}, {"id": "p", "prompt": "Write a poem about the sea."},
              {"id": "c", "prompt": "Describe a cat."}, {"id": "g", "prompt": "Explain gravity."},
              {"id": "h", "prompt": "Say hello."}]
    result = run_evol_instruct(EvolScripted(), inputs, rounds=2, cfg=cfg)
    c = result.counts()
    # round 1: fruit kept; poem copies the template; cat says nothing new; gravity's answer refuses; the
    # rewrite of "Say hello." answers the rewriter. Round 2: the evolved fruit prompt evolves again (kept),
    # the four failures are retried and fail again.
    assert c == {"candidates": 10, "kept": 2, "rejected": {"copies_template": 2, "no_new_information": 2,
                                                          "refusal": 2, "rewrite_is_reply": 2}}
    first, second = result.records
    assert first["prompt"] == "Name a tropical fruit that grows in Brazil and explain how it is eaten."
    assert first["provenance"] == {"method": "evol_instruct", "round": 0, "operation": "add_constraints",
                                   "parent": "f", "parent_prompt": "Name a fruit.", "root": "f", "depth": 1}
    assert second["provenance"]["parent"] == first["id"] and second["provenance"]["depth"] == 2
    assert second["provenance"]["root"] == "f"
    assert first["completion"].startswith("It is a juicy fruit") and first["cut_at_token_limit"] is False
    assert first["ended"] == [True]
    assert result.rounds == [{"round": 0, "candidates": 5, "kept": 1}, {"round": 1, "candidates": 5, "kept": 1}]


def test_evol_a_rewrite_cut_at_the_token_limit_is_rejected():
    from rlhf_jax.data.tokenize import Unfinished

    def complete(prompts, max_new_tokens):
        if "#The Given Prompt#" not in prompts[0][0][-1]["content"]:
            return ["A long and careful answer about rivers in South America."] * len(prompts)
        cut = Unfinished(" Name three rivers in Peru and, for each, the ocean it flows into and")
        whole = Unfinished(" Name three rivers in Peru.\n\nThe Amazon, the")  # cut later, after the rewrite
        return [cut, whole]
    cfg = get_config()
    cfg.evol_instruct.operations = ("deepening",)
    c = run_evol_instruct(complete, [{"id": "a", "prompt": "Name a river."}, {"id": "b", "prompt": "Name a river."}],
                          rounds=1, cfg=cfg).counts()
    assert c == {"candidates": 2, "kept": 1, "rejected": {"cut_at_token_limit": 1}}


@pytest.mark.parametrize("cut", [True, False])
def test_a_generation_cut_at_the_token_limit_loses_its_last_task(cut):
    from rlhf_jax.data.tokenize import Unfinished

    def complete(prompts, max_new_tokens):
        out = []
        for _, prefix in prompts:
            if prefix.startswith("Task"):
                text = " Write a limerick about a cat.\nTask 5: Describe the water cycle in three"
                out.append(Unfinished(text) if cut else text)
            else:
                out.append(" No" if prefix.startswith("Is") else " <noinput>\nOutput: An answer.")
        return out
    cfg = small_config()
    cfg.self_instruct.update(prompts_per_round=1, max_rounds=1)
    c = run_self_instruct(complete, SEEDS, n=10, cfg=cfg).counts()
    if cut:
        assert c == {"candidates": 2, "kept": 1, "rejected": {"cut_at_token_limit": 1}}
    else:  # ended at EOS: the short last task is whole
        assert c == {"candidates": 2, "kept": 2, "rejected": {}}


def test_evol_a_response_cut_at_the_token_limit_is_kept_marked():
    """A response that hit response_tokens is kept with "ended": [false], so SFT on the records learns
    its text without an EOS (validate_sft gives it back `Unfinished`)."""
    from rlhf_jax.data.records import validate_sft
    from rlhf_jax.data.tokenize import Unfinished

    def complete(prompts, max_new_tokens):
        if "#The Given Prompt#" in prompts[0][0][-1]["content"]:
            return [" Name three rivers in Peru and the ocean each one flows into."] * len(prompts)
        answer = Unfinished("The Amazon flows into the Atlantic Ocean, the Ucayali joins the Amazon, and the")
        return [answer] * len(prompts)
    cfg = get_config()
    cfg.evol_instruct.operations = ("deepening",)
    (record,) = run_evol_instruct(complete, [{"id": "a", "prompt": "Name a river."}], rounds=1, cfg=cfg).records
    assert record["cut_at_token_limit"] is True and record["ended"] == [False]
    assert isinstance(validate_sft(record)["completion"], Unfinished)


@pytest.mark.parametrize("classification", [False, True])
def test_self_instruct_marks_an_output_the_token_limit_cut(classification):
    """An instance generation cut at instance_tokens cuts its output when the output comes last
    (input first); a classification instance puts its label first, so its output is whole."""
    from rlhf_jax.data.tokenize import Unfinished

    def complete(prompts, max_new_tokens):
        out = []
        for _, prefix in prompts:
            if prefix.startswith("Task"):
                out.append(" Write a limerick about a cat.")
            elif prefix.startswith("Is"):
                out.append(" Yes" if classification else " No")
            else:
                out.append(Unfinished(" Positive\nInput: I loved every minute of this" if classification
                                      else " <noinput>\nOutput: There once was a cat who sat on a"))
        return out
    cfg = small_config()
    cfg.self_instruct.update(prompts_per_round=1, max_rounds=1)
    result = run_self_instruct(complete, SEEDS, n=10, cfg=cfg)
    assert result.records and all(r["cut_at_token_limit"] for r in result.records)
    assert {tuple(r["ended"]) for r in result.records} == {(classification,)}
