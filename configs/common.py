"""Defaults shared by every pipeline config; a variant changes only what it must."""
import ml_collections


def optimizer(lr: float, **changes) -> dict:
    """Every optimizer field of a trained stage (`rlhf_jax.train.optim.OPTIMIZER_FIELDS`): AdamW
    (b2 0.95, eps 1e-8; N+ uses eps 1e-5) or RMSprop with PyTorch's semantics (decay 0.99)."""
    fields = {"lr": lr, "warmup_steps": 0, "schedule": "cosine", "min_lr_ratio": 0.1, "weight_decay": 0.0,
              "max_grad_norm": 1.0, "optimizer": "adamw", "b1": 0.9, "b2": 0.95, "eps": 1e-8, "rmsprop_decay": 0.99}
    unknown = set(changes) - set(fields)
    if unknown:
        raise KeyError(f"{sorted(unknown)} are not optimizer fields {sorted(fields)}")
    return {**fields, **changes}


def lora(**changes) -> dict:
    """LoRA fields of a trained stage: rank 0 = full fine-tuning; lora_int8 stores the frozen base in
    8 bits (QLoRA's idea), dequantised inside the step."""
    return {"lora_rank": 0, "lora_alpha": 16.0, "lora_targets": "wq,wk,wv,wo,w_gate,w_up,w_down", "lora_int8": False,
            **changes}


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "instructgpt"
    c.seed = 0
    c.stages = "sft,rm,ppo"

    c.model = ml_collections.ConfigDict()
    c.model.preset = "test"  # a key of rlhf_jax.models.PRESETS, or "" when `path` is set
    c.model.path = ""  # HF directory or .gguf file to start from
    c.model.tokenizer = ""  # with a preset: "" = the task world's, "corpus:gpt2", or a local HF tokenizer directory
    c.model.overrides = ml_collections.ConfigDict({"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                                   "head_dim": 16, "d_ff": 128, "max_seq_len": 64})
    c.model.param_dtype = "float32"
    c.model.dtype = "float32"
    # memory (ModelConfig fields; the defaults are the plain computation): remat = what each block
    # keeps for the backward pass (none | full | save_matmuls | save_dots); attention_impl =
    # xla_manual | dot_product (jax.nn.dot_product_attention) | cudnn (its fused GPU kernel, bf16/fp16);
    # logits_chunk > 0: log-probs, entropy and LM losses from the hidden states that many positions
    # at a time (no B x T x V logits), vocab_chunk > 0: also that many vocabulary rows at a time
    c.model.remat = "none"
    c.model.attention_impl = "xla_manual"
    c.model.logits_chunk = 0
    c.model.vocab_chunk = 0

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # "synthetic" | "files"
    c.data.policy = "error"  # bad rows: "error" (default) or "skip" (counted and reported)
    c.data.max_len = 24
    c.data.max_prompt_len = 10
    c.data.template = ""  # chat template name for chat prompts; "" = the tokenizer's
    c.data.world = ml_collections.ConfigDict({
        "seed": 0, "min_items": 3, "max_items": 4, "length_coef": 0.1, "annotator_model": "bt",
        "bt_temperature": 0.02, "flip_rate": 0.0, "n_annotators": 1, "disagreement": 0.0, "consensus": False,
        "tasks": "sort,reverse,max", "perturbations": "exact,truncate,corrupt,swap,filler,repeat"})
    c.data.n_sft = 4000
    c.data.n_sft_val = 256
    c.data.n_rankings = 8000
    c.data.n_rankings_val = 256
    c.data.k = 4
    # synthetic world: rank K samples of the SFT policy (InstructGPT) instead of perturbed answers
    c.data.rm_from_policy = True
    c.data.n_prompts = 2048
    c.data.n_ptx = 2048
    # task world: rows of its pretraining text (synthetic.pretrain_records) the SFT trains on besides the
    # demonstrations, as a base model pretrained on that text (0: demonstrations only)
    c.data.n_sft_pretrain = 0
    # files (data.source = "files"): a path, or "corpus:NAME" for a reader in rlhf_jax.data.corpora
    c.data.sft_train = ""
    c.data.rm_train = ""
    c.data.prompts = ""
    # PPO-ptx text: a file or corpus:NAME; in the task world "" (its demonstrations) or "world:pretrain" (its
    # pretraining text, held-out split scored as the alignment tax)
    c.data.ptx = ""
    c.data.val_fraction = 0.05
    # files: the RM's (and DPO's) held-out pairs from their own source ("" = the first val_fraction of rm_train);
    # any source takes a row slice, "corpus:hh_rlhf[0:200]", so disjoint parts of one file can train and judge
    c.data.rm_val = ""
    # data.rm_train = "stage:prefs": the rankings of stage prefs (K SFT samples per prompt ranked by the gold reward)
    # the gold reward every stage judges with: "" = the task world's (none from files), "clf" = stage clf's classifier,
    # "rm:WORKDIR" = the reward model of another run (trained on pairs this run never sees)
    c.data.gold = ""

    # how every stage samples a policy (PPO's rollouts, best-of-n, rejection sampling, the held-out
    # evaluation, the preference data): at most max_new_tokens tokens, top_k (0 = off) and top_p
    # (1 = off) filtering, and the sampler: "gumbel" (jax.random.categorical) or "inverse_cdf" (one
    # uniform a row: far cheaper on a CPU with a 50k vocabulary; same distribution, other samples for a
    # seed). The temperature is each use's own (ppo.temperature, heldout.temperature, bon.temperature...)
    c.sampling = ml_collections.ConfigDict({"max_new_tokens": 10, "top_k": 0, "top_p": 1.0, "sampler": "gumbel"})

    c.sft = ml_collections.ConfigDict({
        "steps": 0, "epochs": 1, "batch_size": 64, **optimizer(3e-3, warmup_steps=20), "dropout": 0.0,
        "freeze_layers": 0, **lora(),
        "pack": False, "eval_every": 0, "save_every": 100,
        # each batch cut after its longest row, rounded up to cut_bucket columns (0: every batch
        # data.max_len wide): the same loss from fewer columns, one compile per width
        "cut_bucket": 0,
        # gradient accumulation: each batch in grad_accum slices, one slice's activations at a
        # time, the same update as the whole batch (batch_size must be divisible by it)
        "grad_accum": 1,
        "candidates": 0})  # > 0: keep the parameters at that many evenly spaced steps (stage sft_select)
    # stage sft_select (InstructGPT's choice of the SFT checkpoint): score every candidate SFT kept by each
    # criterion of `report` (registered: val_loss, rm_score, gold) and hand on the best by `criterion`;
    # rm_score: the mean score of the reward model (`rm_workdir`'s finished stage rm; "" = this run's trained
    # reward) on n_samples samples at `temperature` for each of n_prompts held-out prompts
    c.sft_select = ml_collections.ConfigDict({"criterion": "rm_score", "report": "val_loss,rm_score",
                                              "rm_workdir": "", "n_prompts": 256, "n_samples": 1,
                                              "temperature": 1.0})
    c.rm = ml_collections.ConfigDict({
        "steps": 0, "epochs": 3, "batch_size": 32, **optimizer(1e-3, warmup_steps=10), **lora(), "margin": 0.0,
        "center_coef": 0.0,  # c * (r_w + r_l)^2 (N+ notes); the papers use none, the tiny world sets 0.01
        "normalize": True, "save_every": 100, "grad_accum": 1,
        # each batch's rankings packed with every prompt once, in rows of K x data.max_len: each
        # response attends to its prompt and itself, so the scores are the padded layout's from
        # fewer positions (tools/pair_positions.py counts them; docs/benchmarks.md times them)
        "pack": False,
        # ensembles (Coste et al.): k members differing in seed, trained in one vmapped step; the
        # uncertainty penalty of uwo / mean_std per use: lambda and variance divisor (ddof 0: k, 1: k - 1)
        "members": 1, "aggregate": "mean",
        "uncertainty": {"ppo": {"coef": 0.1, "ddof": 1}, "bon": {"coef": 0.5, "ddof": 0}},
        "znorm": False,  # divide each member's score by its std on the SFT demonstrations
        "head": "scalar",  # a registered reward head: "scalar", or "inform" (section c.inform)
        "init": "sft",  # the backbone: "sft" (the SFT policy, InstructGPT), "base" (the base model), "random"
        "overrides": ml_collections.ConfigDict(),  # with init="random": the RM's own architecture (d_model...)
        "pairs": "kwise"})  # "kwise": a prompt's C(K,2) pairs in one example; "shuffled": independent pairs
    # InfoRM (Miao et al. 2024): bottleneck width and weight, the KL form, and the latent-space
    # over-optimisation diagnostics logged during PPO every `track_every` iterations
    c.inform = ml_collections.ConfigDict({
        "latent_dim": 128, "beta": 0.1, "kl_form": "per_dim_sum", "track_every": 10, "n_reference": 256,
        "csi_eps": 0.0, "min_samples": 4, "outlier_quantile": 0.99})
    c.ppo = ml_collections.ConfigDict({
        "iterations": 150, "batch_size": 64, "minibatches": 2, "epochs": 4,
        **optimizer(3e-4, warmup_steps=5, schedule="constant"), **lora(),  # LoRA: adapters on policy and value
        "temperature": 1.0,  # the rollouts' (and the log-probs'); how they are sampled: c.sampling
        "kl_coef": 0.05, "kl_estimator": "k1", "adaptive_kl": False, "kl_target": 6.0,
        "kl_horizon": 10000.0, "whiten_rewards": False, "reward_clip": 0.0,
        # the reward of a response without EOS; None keeps the RM score
        "missing_eos_penalty": ml_collections.FieldReference(-10.0, field_type=float),
        # the advantage estimator (objectives/ppo.py ADVANTAGE_ESTIMATORS): "gae" (a value model, InstructGPT), or
        # critic-free: "grpo", "dr_grpo", "rloo", "reinforce_pp", "remax" (configs/critic_free.py sets each paper's
        # settings); group_size: G responses per prompt (batch_size counts responses: batch_size / G prompts)
        "advantage_estimator": "gae", "group_size": 1, "gamma": 1.0, "lam": 0.95, "whiten_advantages": True,
        # the surrogate (POLICY_LOSSES): "ppo" | "grpo" | "dr_grpo" | "dapo" | "gspo"; clip range
        # [1 - clip_eps, 1 + clip_eps_high], clip_eps_high None = clip_eps (DAPO's clip-higher: 0.28)
        "policy_loss": "ppo", "clip_eps": 0.2, "clip_eps_high": ml_collections.FieldReference(None, field_type=float),
        # DAPO: dynamic_sampling F > 0 samples F x the groups and keeps those whose rewards differ;
        # overlong_buffer L > 0 penalises responses longer than max_new_tokens - L linearly down to -1
        "dynamic_sampling": 0, "overlong_buffer": 0,
        "vf_clip": 0.2, "vf_coef": 0.1, "ent_coef": 0.0, "ptx_coef": 0.0, "ptx_batch_size": 0, "ema_decay": 0.0,
        "save_every": 20,
        # each minibatch's gradient accumulated over grad_accum slices (the same update)
        "grad_accum": 1,
        "reward": "rm"})  # what PPO optimises: "rm" (the trained reward) or "gold" (the gold reward itself)

    # fine-grained rewards (Wu et al. 2023): per-segment classifiers (stage "fgrm") whose rewards
    # PPO receives on each segment's last token, plus the holistic RM at the EOS (weight
    # holistic_weight, z-normalised; 0 leaves it out). components: "name:unit:weight[:Err1|Err2],..."
    # with unit token | word | subsentence | sentence | response; data: "" = the task world's
    # span annotations, or a fine_grained file / "corpus:qa_feedback". Empty components: holistic PPO.
    # init: the category models start from "sft" (the SFT policy) or "base" (the base model).
    c.fgrm = ml_collections.ConfigDict({
        "components": "", "holistic_weight": 1.0, "reward": "hard", "min_words": 5, "data": "", "init": "sft",
        "n_train": 4000, "n_val": 256, "steps": 0, "epochs": 2, "batch_size": 32,
        **optimizer(1e-3, warmup_steps=10), "save_every": 100, "grad_accum": 1})

    # preference losses (stage "dpo", after SFT, on the RM's rankings): loss = a registered
    # preference loss (dpo, cdpo, robust, ipo, simpo, orpo); DPO paper: RMSprop, lr 1e-6, 150 warmup, clip 10;
    # simpo_gamma: SimPO's target margin; orpo_lambda: the weight of ORPO's odds-ratio term
    c.dpo = ml_collections.ConfigDict({
        "steps": 0, "epochs": 1, "batch_size": 32,
        **optimizer(1e-4, warmup_steps=10, schedule="constant", max_grad_norm=10.0), **lora(), "beta": 0.1,
        "loss": "dpo",
        "label_smoothing": 0.0, "logprob_reduction": "sum", "simpo_gamma": 0.5, "orpo_lambda": 0.1,
        "cache_reference": True, "save_every": 100, "grad_accum": 1,
        "pack": False,  # each batch's rankings packed with every prompt once, as rm.pack (the same log-probs)
        "eval_every": 0})  # > 0: held-out KL to SFT and gold reward every eval_every steps (the trajectory)

    # online DPO (Guo et al. 2024; stage "online_dpo", after SFT): each iteration samples 2 responses to each of
    # batch_size prompts from the current policy at `temperature`, the annotator (`reward`: "rm" the trained
    # reward, "gold" the gold reward) prefers the higher-scored one (a tie makes no pair), and epochs x minibatches
    # updates of a registered preference loss (the dpo block's fields: loss, beta, ...) train on the pairs against
    # the fixed SFT reference. The defaults sample as many responses (2 x 32 = ppo.batch_size) and take as many
    # gradient steps per iteration (4 x 2) as PPO's
    c.online_dpo = ml_collections.ConfigDict({
        "iterations": 150, "batch_size": 32, "minibatches": 2, "epochs": 4,
        **optimizer(1e-4, warmup_steps=10, schedule="constant", max_grad_norm=10.0), **lora(),
        "temperature": 1.0, "reward": "rm",
        "loss": "dpo", "beta": 0.1, "label_smoothing": 0.0, "logprob_reduction": "sum", "simpo_gamma": 0.5,
        "orpo_lambda": 0.1, "save_every": 20})

    # KTO (stage "kto", after SFT; Ethayarajh et al. 2024): unpaired desirable / undesirable examples, beta and the
    # weights lambda_d / lambda_u (paper: beta 0.1, lambda_d n_D / (lambda_u n_U) in [1, 4/3]); data: "" = the
    # preference data dpo trains on, converted (top-ranked desirable, bottom-ranked undesirable; unpair "both" keeps
    # both sides of a prompt, "one" one of them), or a file / corpus:NAME of binary feedback {prompt, response, label}
    c.kto = ml_collections.ConfigDict({
        "steps": 0, "epochs": 1, "batch_size": 64,
        **optimizer(1e-4, warmup_steps=10, schedule="constant", max_grad_norm=10.0), **lora(), "beta": 0.1,
        "lambda_d": 1.0, "lambda_u": 1.0, "data": "", "unpair": "both", "save_every": 100, "grad_accum": 1,
        "eval_every": 0})  # > 0: held-out KL to SFT and gold reward every eval_every steps (the trajectory)

    # active selection of comparisons (stage "active", task world; rlhf_jax/stages/active.py): rounds that label
    # comparisons until `budgets` (cumulative) are labelled, the first at random, each later one by `strategy`
    # (rlhf_jax.data.active: random, uncertainty, disagreement, diverse_disagreement) under an ensemble of
    # `members` RMs retrained from the SFT backbone every round (max(min_steps, epochs x batches) steps); the pool:
    # pool_prompts prompts with k responses each (SFT samples with data.rm_from_policy, topped up with perturbed
    # answers); diverse_disagreement picks at most per_cluster comparisons per cluster ("prompt", or "task": task
    # type and list length) and round (0: an even share); evaluation: pair accuracy on eval_prompts held-out
    # prompts' k responses, best-of-bon_n of the SFT policy on bon_prompts held-out prompts
    c.active = ml_collections.ConfigDict({
        "strategy": "random", "budgets": "64,128,256,512,1024", "members": 4, "pool_prompts": 1024, "k": 4,
        "clusters": "prompt", "per_cluster": 2, "eval_prompts": 256, "bon_prompts": 128, "bon_n": 16,
        "steps": 0, "epochs": 4, "min_steps": 100, "batch_size": 32, **optimizer(1e-3, warmup_steps=10),
        "save_every": 0})

    # best-of-n evaluation of the SFT policy under the RM (stage "bon") and rejection-sampling
    # fine-tuning on the best of n_samples (stage "rs": the SFT fields, started from the SFT policy)
    # rank_by: "rm" (the trained reward: single, ensemble, InfoRM, fine-grained) or "gold" (oracle)
    c.bon = ml_collections.ConfigDict({"n_samples": 64, "n_prompts": 128, "temperature": 1.0, "rank_by": "rm"})
    c.rs = ml_collections.ConfigDict(dict(c.sft.to_dict(), n_samples=16, n_prompts=2048, temperature=1.0, lr=1e-3,
                                          warmup_steps=10, epochs=2))

    # the gold classifier (stage "clf", the DPO paper's IMDb setting): a scalar-head decoder of the base
    # model's architecture with `overrides`, random init, trained with binary cross-entropy on labelled text
    # (train / test: corpus:NAME readers of {"text", "label"}; n_train / n_test: the first n, 0 = all), each
    # text cut to a random length in [min_len, max_len] tokens; seed: its init, data order and cuts (not the
    # run's seed: one gold classifier for every seed); output: the gold score, "prob" = p(positive) or "logit"
    c.clf = ml_collections.ConfigDict({
        "train": "", "test": "", "n_train": 0, "n_test": 5000, "min_len": 8, "max_len": 64, "seed": 0,
        "output": "prob", "overrides": ml_collections.ConfigDict(), "steps": 0, "epochs": 1, "batch_size": 64,
        **optimizer(1e-3, warmup_steps=20), "save_every": 200})

    # the held-out evaluation of the trained policies by ppo, dpo and rs (and best-of-n's prompts): n_prompts
    # held-out prompts (rlhf_jax.data.run_data), sampled at `temperature`, n_report_samples of them in the report
    c.heldout = ml_collections.ConfigDict({"n_prompts": 256, "temperature": 1.0, "n_report_samples": 8})

    # the evaluation stage ("eval", or `python -m rlhf_jax.evaluate`): suites (rlhf_jax.eval.suites) on
    # policies "name=spec,..." (stage:NAME of `source`, "" = this workdir; or an HF directory / .gguf), judged by
    # gold (task world), rm (the trained reward) and/or llm (judge_model: a path or policy:NAME); generation samples
    # at `temperature` (the policies' own distribution, where the KL to the baseline is measured; 0 = greedy, no
    # KL); prompts / pairs: "" = the run's held-out sets, or a file / corpus:NAME
    c.evaluate = ml_collections.ConfigDict({
        "suites": "generation,perplexity,judge_agreement,rm_pairs", "policies": "sft=stage:sft,ppo=stage:ppo",
        "baseline": "sft", "source": "", "judges": "gold,rm", "judge_model": "", "judge_chat": "tokenizer",
        "judge_order_rule": "agree", "prompts": "", "pairs": "", "n_prompts": 256, "n_pairs": 500,
        "n_truthfulqa": 0, "n_alpaca": 805, "truthfulqa_formats": "qa_primer,chat:tokenizer", "max_new_tokens": 0,
        "temperature": 1.0, "batch_size": 64, "n_report": 12, "bootstrap": 2000,
        "chat_prompts": False})  # wrap text prompts in a user turn of the chat template (instruct models)
    # wandb: "auto" (WANDB_MODE if set, else online with an API key, offline without), online, offline, disabled
    # group: the W&B group of the run's stages ("" = name-workdir; a sweep sets its name)
    c.log = ml_collections.ConfigDict({"wandb": "auto", "project": "rlhf_jax", "group": ""})
    c.debug_stop_after = ml_collections.ConfigDict({"sft": 0, "rm": 0, "ppo": 0, "dpo": 0, "rs": 0,  # simulate a
                                                    "clf": 0})  # kill (tests)
    c.debug_stop_after.online_dpo = 0
    return c
