"""Parsing the generator's text, the prompt templates, and the bootstrapping draw of examples."""
import random

import pytest

from configs.generate_data import get_config
from rlhf_jax.errors import ConfigError
from rlhf_jax.synth import parse, templates


def test_parse_tasks_numbered_lines_continuations_and_stop():
    text = ("Task 9: Write a haiku about rain.\nTask 10: Name three rivers\nin Europe.\n"
            "11. Explain recursion to a child.\nTask 3: an old number ends the list\nTask 12: not reached")
    assert parse.parse_tasks(text, first=9) == ["Write a haiku about rain.", "Name three rivers in Europe.",
                                                "Explain recursion to a child."]
    # the model's own example instance is not part of a task
    assert parse.parse_tasks("Task 9: Sort the list.\nInput: 3, 1, 2\nOutput: 1, 2, 3", 9) == ["Sort the list."]
    assert parse.parse_tasks("Task 9 : Spaced colon.", 9) == ["Spaced colon."]
    # other text after a finished task ends the list; an unfinished one continues on the next line
    assert parse.parse_tasks("Task 9: Find x.\nNow, with these new tasks in mind\nTask 10: y", 9) == ["Find x."]
    assert parse.parse_tasks("Sure! Here are some tasks you might like.", 9) == []
    assert parse.parse_tasks("Task 9:", 9) == []


def test_parse_instance_plain_and_output_first():
    assert parse.parse_instance("Input: <noinput>\nOutput: Hello there.", False) == {"input": "",
                                                                                     "output": "Hello there."}
    assert parse.parse_instance("Input: 3, 1, 2\nOutput: 1, 2, 3\nTask: next one", False) == {
        "input": "3, 1, 2", "output": "1, 2, 3"}
    assert parse.parse_instance("Input: only an input", False) is None
    assert parse.parse_instance("Class label: Positive\nInput: I loved this film.", True) == {
        "input": "I loved this film.", "output": "Positive"}
    assert parse.parse_instance("Class label: Positive", True) is None
    assert parse.parse_instance("Class label:\nInput: text", True) is None


def test_parse_yes_no_and_rewrite():
    assert parse.parse_yes_no(" Yes, it is.") is True and parse.parse_yes_no("no") is False
    assert parse.parse_yes_no("Maybe") is None and parse.parse_yes_no("") is None
    assert parse.parse_rewrite(' "Write two poems."\n\nHere is my answer: ...') == "Write two poems."
    assert parse.parse_rewrite("  \n ") is None
    assert parse.parse_rewrite("#Rewritten Prompt#: keep the words") == "#Rewritten Prompt#: keep the words"


SEEDS = [{"id": f"s{i}", "instruction": f"seed task {i}"} for i in range(10)]


def test_draw_examples_k_from_seeds_plus_accepted():
    rng = random.Random(0)
    for n_machine, expect in ((0, (8, 0)), (1, (7, 1)), (5, (6, 2))):
        machine = [{"id": f"m{i}", "instruction": f"machine {i}"} for i in range(n_machine)]
        for _ in range(20):
            ex = templates.draw_examples(SEEDS, machine, 6, 2, rng)
            ids = [e["id"] for e in ex]
            assert len(set(ids)) == len(ids) == 8
            assert (sum(i.startswith("s") for i in ids), sum(i.startswith("m") for i in ids)) == expect
            assert ids == sorted(ids, key=lambda i: i.startswith("m"))  # seeds first, as the paper
    # every seed gets drawn: the draw is random, not the first k
    drawn = {e["id"] for _ in range(50) for e in templates.draw_examples(SEEDS, [], 6, 2, rng)}
    assert drawn == {s["id"] for s in SEEDS}
    assert len(templates.draw_examples(SEEDS[:3], [], 6, 2, rng)) == 3


def test_self_instruct_prompt_numbers_examples_and_prefix():
    s = get_config().self_instruct
    messages, prefix = templates.self_instruct_prompt(SEEDS[:8], s)
    assert messages[0]["role"] == "system" and "text-only" in messages[0]["content"]
    assert "Task 1: seed task 0\n" in messages[1]["content"] and "Task 8: seed task 7" in messages[1]["content"]
    assert "Write 8 new tasks, numbered from Task 9." in messages[1]["content"]
    assert prefix == "Task 9:"


def test_classification_instances_are_output_first():
    s = get_config().self_instruct
    shots = [{"instruction": "Is this review positive?", "input": "Great film.", "output": "Positive"}]
    (system, user), prefix = templates.instance_prompt("Classify the email as spam or not.", True, shots, s)
    assert prefix == "Class label:"
    assert user["content"].index("Class label: Positive") < user["content"].index("Input: Great film.")
    (_, user), prefix = templates.instance_prompt("Sort the numbers.", False,
                                                  [{"instruction": "Add.", "input": "", "output": "3"}], s)
    assert prefix == "Input:" and "Input: <noinput>\nOutput: 3" in user["content"]
    assert user["content"].index("Input:") < user["content"].index("Output:")


def test_evol_prompts_and_template_errors():
    e = get_config().evol_instruct
    (msg,), prefix = templates.evol_prompt("Name a fruit.", "add_constraints", e)
    assert e.methods["add_constraints"] in msg["content"] and msg["content"].endswith(
        "#The Given Prompt#:\nName a fruit.\n#Rewritten Prompt#:")
    (msg,), _ = templates.evol_prompt("Name a fruit.", "breadth", e)
    assert "#Created Prompt#:" in msg["content"]
    with pytest.raises(ConfigError, match="'widening' is not 'breadth' or one of"):
        templates.evol_prompt("x", "widening", e)
    with pytest.raises(ConfigError, match=r"self_instruct.user: the template uses \{nope\}"):
        templates.fill("{nope}", "self_instruct.user", k=1)


def test_config_variants_and_unknown_variant():
    assert get_config("smoke").self_instruct.k_seed == 2
    with pytest.raises(ValueError, match="unknown variant.*valid: default"):
        get_config("smok")
