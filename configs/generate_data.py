"""Synthetic instruction data: `python -m rlhf_jax.generate_data {self_instruct,evol_instruct} --config
configs/generate_data.py:VARIANT` (the default file and variant need no flag).

    python -m rlhf_jax.generate_data self_instruct --n 500 --out runs/si
    python -m rlhf_jax.generate_data evol_instruct --instructions runs/si/records.jsonl --rounds 2 --out runs/evol
    python -m rlhf_jax.generate_data self_instruct --smoke --out /tmp/si    # the `smoke` variant: a tiny run
    python -m rlhf_jax.generate_data self_instruct --set self_instruct.k_seed=4 --out runs/si4

Every prompt the generator sees is a template below, so changing a prompt is a config change:
`{name}` fields are filled by `rlhf_jax.synth.templates` (str.format; write `{{` for a brace).

Variants:
  default   Self-Instruct as in Wang et al. 2023 (k = 6 seed + 2 machine examples, ROUGE-L 0.7, the
            paper's keyword blocklist) and Evol-Instruct as in Xu et al. 2023 (four in-depth
            operations and in-breadth mutation, the elimination rules).
  cpu       default with shorter generations and a batch that suits a CPU (the measured run).
  smoke     a few prompts and tokens: checks the pipeline, not the text.
"""
from ml_collections import ConfigDict

from configs.variants import Variants

VARIANTS = Variants("configs/generate_data.py", {
    "default": "the papers' settings", "cpu": "shorter generations for a CPU run", "smoke": "a tiny run"})

SELF_INSTRUCT_SYSTEM = (
    "You write new tasks for training an AI assistant. Each task is one instruction that a person might "
    "give to a text-only assistant.\n"
    "Rules:\n"
    "1. Each new task must differ from the examples: use a different verb and a different topic.\n"
    "2. Mix kinds of tasks: open questions, writing, classification, editing, reasoning, advice, coding.\n"
    "3. The assistant can only read and write text: no images, audio, video, files, maps or web browsing.\n"
    "4. Write in English, one or two sentences per task, as an imperative or a question.\n"
    "5. Write each task on its own line as 'Task N: <instruction>'.")
SELF_INSTRUCT_USER = "Here are {k} example tasks:\n{examples}\n\nWrite {n_new} new tasks, numbered from Task {next}."
SELF_INSTRUCT_EXAMPLE = "Task {i}: {instruction}"
# the assistant turn starts with this text (the model continues it), so the first new task is numbered
SELF_INSTRUCT_PREFIX = "Task {next}:"

INSTANCE_SYSTEM = ("You write one example for a task: an input (or <noinput> when the task needs none) and the "
                   "correct output. Answer only in the format shown.")
INSTANCE_EXAMPLE = "Task: {instruction}\nInput: {input}\nOutput: {output}"
INSTANCE_USER = "{examples}\n\nTask: {instruction}"
INSTANCE_PREFIX = "Input:"
# classification tasks are generated output-first (the paper's fix for inputs biased to one label):
# the model names a class label, then writes an input of that class
CLASS_SYSTEM = ("You write one example for a classification task: first a class label, then an input that "
                "belongs to that class. Answer only in the format shown.")
CLASS_EXAMPLE = "Task: {instruction}\nClass label: {output}\nInput: {input}"
CLASS_PREFIX = "Class label:"

IS_CLASS_SYSTEM = "Say whether each task is a classification task with a small fixed set of output labels."
IS_CLASS_EXAMPLE = "Task: {instruction}\nIs it classification? {answer}"
IS_CLASS_USER = "{examples}\n\nTask: {instruction}"
IS_CLASS_PREFIX = "Is it classification?"

RESPONSE_SYSTEM = "You are a helpful assistant."

EVOL_DEPTH = (
    "I want you to act as a prompt rewriter. Rewrite #The Given Prompt# into a more complex version that is "
    "harder for an AI assistant to handle, yet still reasonable and answerable by a person. Keep any tables or "
    "code in it. {method} The rewritten prompt may add only 10 to 20 words to #The Given Prompt#. Do not use the "
    "words '#The Given Prompt#', '#Rewritten Prompt#', 'given prompt' or 'rewritten prompt' in your rewrite.\n"
    "#The Given Prompt#:\n{instruction}\n#Rewritten Prompt#:")
EVOL_BREADTH = (
    "I want you to act as a prompt creator. Take inspiration from #The Given Prompt# to write a brand new "
    "prompt in the same domain but on a rarer topic, of similar length and difficulty, that a person can "
    "understand and answer. Do not use the words '#The Given Prompt#', '#Created Prompt#', 'given prompt' or "
    "'created prompt' in your prompt.\n#The Given Prompt#:\n{instruction}\n#Created Prompt#:")
EVOL_METHODS = {
    "add_constraints": "Add one more constraint or requirement to it.",
    "deepening": "If it asks about a specific issue, increase the depth and breadth of the question.",
    "concretizing": "Replace general concepts with more specific ones.",
    "increased_reasoning": "If it can be solved in a few simple steps of thinking, rewrite it to ask explicitly "
                           "for several steps of reasoning.",
}

# Self-Instruct's filter (Wang et al. 2023, section 2.3): tasks a language model cannot do from text
BLOCKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
             "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
REFUSALS = ("sorry", "as an ai", "i cannot", "i can't", "i am unable", "i'm unable", "as a language model")
# a rewrite that answers the rewriter instead of being a prompt (common in small models)
REPLY_OPENERS = ("sure", "certainly", "of course", "absolutely", "okay", "i'm ready", "i am ready", "i'd be happy",
                 "i would be happy", "i'm happy", "i am happy", "here is", "here's")
TEMPLATE_WORDS = ("#the given prompt#", "#rewritten prompt#", "#created prompt#", "given prompt", "rewritten prompt",
                  "created prompt")


def get_config(arg: str | None = None) -> ConfigDict:
    variants = VARIANTS.parse(arg, "default")
    c = ConfigDict()
    c.variant = arg or "default"
    c.seed = 0
    # Self-Instruct sampled at temperature 0.7, top-p 0.5
    c.sampling = ConfigDict(dict(batch_size=16, temperature=0.7, top_p=0.5, top_k=0, sampler="gumbel",
                                 max_prompt_len=768, prompt_bucket=64))
    c.self_instruct = ConfigDict(dict(
        k_seed=6, k_machine=2, new_per_prompt=8, prompts_per_round=32, max_rounds=100,
        instruction_tokens=160, instance_tokens=160, class_tokens=4, instance_examples=2,
        system=SELF_INSTRUCT_SYSTEM, user=SELF_INSTRUCT_USER, example=SELF_INSTRUCT_EXAMPLE,
        prefix=SELF_INSTRUCT_PREFIX,
        instance_system=INSTANCE_SYSTEM, instance_user=INSTANCE_USER, instance_example=INSTANCE_EXAMPLE,
        instance_prefix=INSTANCE_PREFIX, class_system=CLASS_SYSTEM, class_example=CLASS_EXAMPLE,
        class_prefix=CLASS_PREFIX, is_class_system=IS_CLASS_SYSTEM, is_class_user=IS_CLASS_USER,
        is_class_example=IS_CLASS_EXAMPLE, is_class_prefix=IS_CLASS_PREFIX, is_class_examples=8))
    c.filters = ConfigDict(dict(
        rouge_threshold=0.7, min_words=3, max_words=150, blocklist=BLOCKLIST, near_dup_threshold=0.8,
        max_output_words=400))
    c.evol_instruct = ConfigDict(dict(
        rounds=2, operations=("add_constraints", "deepening", "concretizing", "increased_reasoning", "breadth"),
        depth=EVOL_DEPTH, breadth=EVOL_BREADTH, methods=EVOL_METHODS, response_system=RESPONSE_SYSTEM,
        rewrite_tokens=96, response_tokens=192,
        # elimination rules (rlhf_jax/synth/evol.py): (1) no new information, (2) refusal / too short, (3) copies
        same_rouge=0.9, min_new_words=1, refusals=REFUSALS, refusal_max_words=80, min_response_words=3,
        template_words=TEMPLATE_WORDS, reply_openers=REPLY_OPENERS))
    if "cpu" in variants:
        # top-p sorts the 49,152-token vocabulary at every step: 0.7 s of a 1.0 s decoding step at 16 rows
        # on this 2-core CPU (top-k 50: 0.5 s, neither: 0.33 s); prompt tokens cost as much as the rest
        c.sampling.update(batch_size=16, top_p=1.0, top_k=50)
        c.self_instruct.update(instruction_tokens=128, instance_tokens=96, prompts_per_round=16,
                               is_class_examples=4, instance_examples=1)
        c.evol_instruct.update(rewrite_tokens=96, response_tokens=96)
    if "smoke" in variants:
        c.sampling.update(batch_size=4, max_prompt_len=256, prompt_bucket=32)
        c.self_instruct.update(k_seed=2, k_machine=1, new_per_prompt=2, prompts_per_round=4, max_rounds=3,
                               instruction_tokens=12, instance_tokens=12, class_tokens=2, instance_examples=1,
                               is_class_examples=2)
        c.evol_instruct.update(rounds=1, rewrite_tokens=12, response_tokens=12)
    return c
