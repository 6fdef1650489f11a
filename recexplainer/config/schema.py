"""Typed configuration schemas, registered with Hydra's ConfigStore.

Every YAML file of a config group starts from one of these schemas (``defaults: [schema_..., _self_]``),
so a misspelled key or a value of the wrong type fails at start-up with an error naming the key. Where a
group's values live in its YAML file (aligner, evaluation, explain, recommender.train), the schema holds the
types only (``MISSING``): every default has exactly one home.
Choices and ranges that a type cannot express (``dedup: first|last|none``) are checked by
:func:`recexplainer.config.validate.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class PathsConfig:
    artifacts: str = "./artifacts"  # root of every stage's artifact folder
    assets: str | None = None  # offline asset cache; null: $RECEXPLAINER_CACHE or the user cache dir


@dataclass
class PreprocessConfig:
    min_rating: float | None = None  # drop interactions rated below this (null: keep all)
    dedup: str = "first"  # repeated (user, item) pairs: keep the first, the last, or "none" (keep all)
    top_n_items: int | None = None  # keep only the N most frequent items (paper preprocessing)
    user_core: int = 0  # iterative k-core: users with fewer interactions are dropped
    item_core: int = 0  # iterative k-core: items with fewer interactions are dropped
    sample_users: int | None = None  # keep a random sample of M users (seeded)
    min_seq_len: int = 3  # leave-one-out needs at least 1 train + 1 valid + 1 test item
    unique_titles: bool = True  # suffix repeated titles with " [2]", " [3]" so titles identify items


@dataclass
class DatasetBase:
    name: str = MISSING
    format: str = MISSING
    missing_title: str = "error"  # items without a title: "error", "drop" their interactions, or "id"
    encoding: str = "utf-8"  # of the dataset's text files (e.g. latin-1 for older MovieLens / RecBole files)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)


@dataclass
class RecboleAtomicDataset(DatasetBase):
    format: str = "recbole_atomic"
    path: str | None = None  # folder holding <file_prefix>.inter and <file_prefix>.item
    asset: str | None = None  # or: name of an offline asset that provides that folder
    file_prefix: str | None = None  # null: the dataset name
    user_field: str = "user_id"
    item_field: str = "item_id"
    time_field: str = "timestamp"
    rating_field: str | None = "rating"
    title_field: str = "movie_title"
    # extra .item columns kept as metadata, mapped to normalized names
    metadata_fields: dict[str, str] = field(default_factory=dict)
    # metadata fields whose values are space-separated lists (RecBole token_seq), e.g. genres
    list_fields: list[str] = field(default_factory=list)


@dataclass
class AmazonDataset(DatasetBase):
    format: str = "amazon"
    reviews_file: str = MISSING  # Amazon reviews 2018 JSON lines (.json or .json.gz)
    meta_file: str = MISSING  # Amazon metadata 2018 JSON lines (.json or .json.gz)
    description_chars: int = 300  # truncate descriptions kept as metadata


@dataclass
class SyntheticDataset(DatasetBase):
    format: str = "synthetic"
    n_users: int = 60
    n_items: int = 40
    n_genres: int = 4
    min_len: int = 8
    max_len: int = 20
    stickiness: float = 0.8  # chance that the next item keeps the genre of the previous one
    seed: int = 0


@dataclass
class RecTrainConfig:
    """Types of ``recommender.train``; the values live in conf/recommender/<name>.yaml."""

    lr: float = MISSING
    weight_decay: float = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    max_epochs: int = MISSING
    patience: int = MISSING  # early stopping on the monitored validation metric
    monitor: str = MISSING
    plateau_factor: float | None = MISSING  # multiply lr by this when `monitor` stalls (null: constant lr)
    plateau_patience: int = MISSING  # epochs without improvement before the lr is reduced
    grad_clip: float | None = MISSING
    num_workers: int = MISSING


@dataclass
class RecommenderBase:
    name: str = MISSING
    hidden_size: int = 64
    loss: str = "ce"  # "ce": full softmax over all items; "bce": sampled negatives
    n_negatives: int = 1  # negatives per positive for loss=bce
    train: RecTrainConfig = field(default_factory=RecTrainConfig)


@dataclass
class SASRecConfig(RecommenderBase):
    name: str = "sasrec"
    n_layers: int = 2
    n_heads: int = 2
    inner_size: int = 256
    dropout: float = 0.35
    attn_dropout: float = 0.2
    max_len: int = 50
    norm_first: bool = True  # pre-LayerNorm (SASRec.pytorch) or post-LayerNorm (original Transformer)
    window_stride: int | None = None  # training windows over long histories; null: max_len (no overlap)


@dataclass
class MFConfig(RecommenderBase):
    name: str = "mf"
    dropout: float = 0.0


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "32-true"
    recommender_precision: str | None = None  # the recommender stage's precision; None: `precision`
    num_nodes: int = 1
    deterministic: bool = False
    enable_progress_bar: bool = True
    log_every_n_steps: int = 10


@dataclass
class LoggerConfig:
    name: str = "csv"  # "csv" or "wandb"
    project: str = "recexplainer"
    mode: str = "offline"  # wandb: offline (default, no network), online or disabled
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class PromptConfig:
    """How users and items appear in prompts: the paper's alignment modes (B / I / H) and their text rules."""

    mode: str = MISSING  # behavior | intention | hybrid
    injection: str = "add"  # aligner: add the projected vector to the placeholder embedding, or "replace" it
    user_placeholder: str = "<user>"
    item_placeholder: str = "<item>"
    user_format: str = MISSING  # how a user fills {user}: fields {placeholder} and {titles}
    item_format: str = MISSING  # how an item fills {item} / candidates: fields {placeholder} and {title}
    title_separator: str = "; "
    max_hist_len: int = 9  # the last N history items form a prefix (the paper: 9 / 13 / 16)
    mask: str = "prefix"  # items the recommender may not return when labels are drawn: prefix | history
    text_hist_len: int | None = None  # {titles} shows the last N items of a prefix; null: all (the paper)


@dataclass
class TaskConfig:
    kind: str = MISSING  # what the task asks: a registered task kind (recexplainer/tasks/)
    task_id: int = MISSING  # the paper's task number (1 retrieval ... 6 history reconstruction)
    modes: list[str] = field(default_factory=lambda: ["behavior", "intention", "hybrid"])
    templates: list[str] = MISSING  # paraphrased instructions; named fields only, e.g. {user}, {item}
    train_per_user: int | None = 1  # training prefixes per user (item tasks: examples per item); null: all
    max_train: int | None = None  # cap on training examples (null: no cap)
    max_eval: int | None = 200  # cap on validation and on test examples each (null: every user / item)
    user_format: str | None = None  # overrides the mode's user_format for this task (e.g. embedding only)
    n_candidates: int = 5  # ranking
    target_k: int = 1  # retrieval: titles in the training target (the recommender's top k in order; 1: top-1)
    top_fraction: float = 0.2  # interest: positives come from the recommender's top band
    bottom_fraction: float = 0.5  # interest: negatives come from its bottom band
    eval_items_fraction: float = 0.1  # item tasks: items held out from training for evaluation
    path: str | None = None  # replay: user-supplied JSONL of {"instruction", "response"} (no download)
    full_history: bool = False  # the user text shows every title of the prefix, whatever text_hist_len
    # explanation: target templates per recommender answer; fields {decision}, {cited} and optional {genre}
    yes_templates: list[str] = field(default_factory=list)
    no_templates: list[str] = field(default_factory=list)
    n_cited: int = 2  # explanation: history items cited (the recommender's top leave-one-out attributions)
    yes_share: float = 0.5  # explanation: share of prefixes explained with a top-band (yes) item
    # explanation: how {evidence} is written (fields {up} and {down}: the n_cited history items whose removal
    # lowers / raises the item's score most, with their attributions); None: the templates have no {evidence}
    evidence: str | None = None


@dataclass
class LLMConfig:
    name: str = MISSING
    source: str = MISSING  # smollm2_gguf | tiny_random | pretrained
    path: str | None = None  # pretrained: local folder or hub name (must be available offline)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    prompt_template: str | None = None  # for models without a chat template; must contain {prompt}
    system_prompt: str | None = None
    trust_remote_code: bool = False
    tiny_layers: int = 2  # tiny_random only
    tiny_hidden: int = 64  # tiny_random only


@dataclass
class AlignerConfig:
    """Types of ``aligner``; the values (and what each knob does) live in conf/aligner/default.yaml."""

    # seeds the aligner alone (LoRA / projector initialisation, the training sample, batch order); null: the
    # top-level seed. Replicates on a fixed recommender and alignment data: aligner.seed=1,2,3 (-m)
    seed: int | None = MISSING
    projector: str = MISSING
    injection: str = MISSING
    lora_r: int = MISSING
    lora_alpha: int = MISSING
    lora_dropout: float = MISSING
    lora_target_modules: list[str] = MISSING
    train_tasks: list[str] | None = MISSING
    max_train_examples: int | None = MISSING
    uncapped_tasks: list[str] | None = MISSING  # every training example of these tasks is kept under the cap
    max_valid_examples: int | None = MISSING
    max_length: int = MISSING
    batch_size: int = MISSING
    accumulate_grad_batches: int = MISSING
    length_group_mega: int = MISSING
    pair_batching: bool = MISSING  # the yes and no example of an interest prefix in the same batch
    lr: float = MISSING
    projector_lr: float = MISSING
    weight_decay: float = MISSING
    warmup_ratio: float = MISSING
    projector_only_steps: int = MISSING
    max_epochs: int = MISSING
    max_steps: int = MISSING
    budget_minutes: float | None = (
        MISSING  # a time budget, counted in tokens (replaces max_epochs / max_steps)
    )
    budget_tokens_per_s: float = MISSING  # the throughput one budget minute stands for
    val_check_interval: float = MISSING
    gradient_checkpointing: bool = MISSING
    cpu_attention_fp32: bool = MISSING  # CPU training in bf16 / fp16: the attention in fp32 (faster backward)
    checkpoint_every_n_steps: int = MISSING  # save a resumable checkpoint (trainable weights only) this often
    num_workers: int = MISSING
    loss_weighting: str = MISSING  # token | example
    projector_init: str = MISSING  # random | title_lsq | title_lsq_top1
    item_head_weight: float = MISSING  # 0: no item head
    item_head_temperature: float = MISSING  # the recommender's softmax temperature (item head target)
    item_head_tasks: list[str] = MISSING  # the tasks whose examples train the item head
    item_head_space: str = MISSING  # projected | recommender | both: what the item head scores
    title_distill_weight: float = MISSING  # 0: none; > 0: task-1 titles distilled from the recommender
    title_distill_temperature: float = MISSING  # the recommender's softmax temperature (title distillation)


@dataclass
class StudentConfig:
    """Types of ``evaluation.student``; the values live in conf/evaluation/default.yaml."""

    hidden_size: int = MISSING  # the distilled SASRec student (1 layer, 1 head)
    epochs: int = MISSING
    lr: float = MISSING
    max_prefixes: int | None = MISSING  # training prefixes labelled with the target's top-1 (seeded sample)


@dataclass
class EvaluationConfig:
    """Types of ``evaluation``; the values live in conf/evaluation/default.yaml."""

    model: str = MISSING
    split: str = MISSING  # valid | test: which alignment-data split is evaluated
    tasks: list[str] | None = MISSING  # null: every evaluable task present in the alignment data
    max_examples: int | None = MISSING  # per-task cap (seeded sample); null: all
    max_examples_per_task: dict[str, int] = field(default_factory=dict)  # overrides the cap per task
    batch_size: int = MISSING
    num_beams: int = MISSING  # task 1 candidates (beam width 5, 5 returned sequences, as the public code)
    # task 1 search width; null: num_beams (the paper). Wider: the num_beams best *distinct* titles of the
    # wider search are the candidates (a beam search of width 5 often returns one title twice)
    beam_width: int | None = MISSING
    constrained: bool = MISSING  # decode only catalog titles (prefix trie); report as its own setting
    max_new_tokens_margin: int = MISSING  # generation bound: titles asked x longest title + separators + this
    fuzzy_cutoff: float = MISSING  # difflib ratio for the separately reported fuzzy match
    # recai: the public reference code's definitions under the plain metric names | lenient: parsed titles,
    # repeats removed; the other one is reported too, as <metric>/lenient or <metric>/recai
    scoring: str = MISSING
    # yes/no tasks: the LLM's decision threshold fit on up to this many validation examples per task, reported
    # as <task>/acc/calibrated next to the reference rule's <task>/acc; 0: off
    calibration_examples: int = MISSING
    calibration: str = (
        MISSING  # prior: as many yes answers as yes labels there | accuracy: the most accurate threshold
    )
    few_shot: int = MISSING  # unaligned model: training examples shown as earlier turns
    # the LLM's numerics at inference (evaluate and explain stages); None: trainer.precision. E.g. bf16-mixed (autocast) or bf16-true
    # (weights cast) to evaluate an aligner trained in fp32 faster on a GPU or a CPU with native bf16
    precision: str | None = MISSING
    baselines: list[str] = MISSING
    student: StudentConfig = field(default_factory=StudentConfig)


@dataclass
class ExplainConfig:
    """Types of ``explain``; the values live in conf/explain/default.yaml."""

    # aligned | unaligned (the base LLM) | template (no LLM: the recommender's decision and top attributed
    # items in the explanation task's templates: the ceiling) | template_random (random history items: floor)
    model: str = MISSING
    split: str = MISSING  # valid | test: pairs from this split's interest examples
    n_pairs: int = MISSING  # (user, item) pairs, half from the recommender's top band, half from its bottom
    template: str = MISSING
    # {evidence} in the template: the recommender's leave-one-out attributions as text ({up} / {down})
    evidence: str = MISSING
    # the decision is yes when P(yes) exceeds a threshold fit on this many validation pairs; 0: P(yes) > 0.5
    calibration_examples: int = MISSING
    calibration: str = MISSING  # prior | accuracy, as evaluation.calibration
    max_new_tokens: int = MISSING
    # item_head: the item head's percentile of the item at the task-3 question about the pair; interest_prompt:
    # the LLM's P(yes) vs P(no) after that question; explain_prompt: after the explain prompt; auto: item_head
    # where the aligner has an item head, else interest_prompt. Then explained after the prefix
    decision: str = MISSING
    # the answer starts with the model's own decision ({decision} = Yes / No), so that a model aligned to
    # answer tersely still explains; "" lets the model write the whole answer
    answer_prefix: str = MISSING
    batch_size: int = MISSING
    n_random: int = MISSING  # random removals per explanation (counterfactual reference)
    score_predictor: str = MISSING  # minilm: ridge on all-MiniLM-L6-v2 embeddings predicts the score | none
    score_predictor_alpha: float = MISSING  # ridge penalty
    examples_in_report: int = MISSING


@dataclass
class JudgeConfig:
    name: str = "none"  # none | openai (any OpenAI-compatible endpoint) | local (the base LLM in-process)
    base_url: str | None = None  # openai: e.g. https://api.openai.com/v1 or http://localhost:8000/v1
    model: str | None = None  # openai: the judge model name
    api_key_env: str | None = "OPENAI_API_KEY"  # name of the environment variable with the key (never logged)
    concurrency: int = 4
    max_retries: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 60.0
    cache_dir: str | None = None  # judgment cache; null: <paths.artifacts>/judge_cache
    # local: score = the most probable digit token 0-3; false: free text, parsed strictly
    constrained: bool = True
    retry_unparsable: bool = (
        False  # re-ask prompts whose cached reply could not be parsed (default: reuse it)
    )
    # the explain stage fails (judgments cached, nothing else lost) when more than this share of the judge's
    # requests failed (unreachable endpoint, HTTP errors after the retries); unparsable replies do not count
    max_failed_share: float = 0.2


@dataclass
class Config:
    stage: str = "report"  # the stage to run; its missing upstream stages run first
    seed: int = 42
    force: bool = False  # recompute the requested stage even if a complete artifact exists
    num_threads: int | None = None  # torch intra-op threads; null: leave torch's default
    paths: PathsConfig = field(default_factory=PathsConfig)
    dataset: Any = MISSING
    recommender: Any = MISSING
    prompt: PromptConfig = field(default_factory=PromptConfig)
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    llm: LLMConfig = field(default_factory=LLMConfig)
    aligner: AlignerConfig = field(default_factory=AlignerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    show: int = 0  # alignment_data: print this many rendered examples per task
    plugins: list[str] = field(default_factory=list)  # modules imported at start-up (your own task kinds)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def cpu_precision() -> str:
    """``${cpu_precision:}`` (the default ``trainer.precision`` of ``trainer=cpu``): ``bf16-mixed`` on a CPU
    that multiplies bf16 natively (AVX512-BF16 or AMX), where LoRA training is 1.1-1.5x and inference about
    2x faster than fp32; ``32-true`` elsewhere, where PyTorch emulates bf16 and it is several times slower.
    The resolved value is what cache keys and the saved config.yaml hold."""
    from recexplainer.runtime import cpu_has_bf16

    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def register_configs() -> None:
    if not OmegaConf.has_resolver("cpu_precision"):
        OmegaConf.register_new_resolver("cpu_precision", cpu_precision, use_cache=True)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="dataset", name="schema_recbole_atomic", node=RecboleAtomicDataset)
    cs.store(group="dataset", name="schema_amazon", node=AmazonDataset)
    cs.store(group="dataset", name="schema_synthetic", node=SyntheticDataset)
    cs.store(group="recommender", name="schema_sasrec", node=SASRecConfig)
    cs.store(group="recommender", name="schema_mf", node=MFConfig)
    cs.store(group="trainer", name="schema_trainer", node=TrainerConfig)
    cs.store(group="logger", name="schema_logger", node=LoggerConfig)
