"""Start-up checks of the composed config: every key declared by a schema, choices, ranges, task names,
templates and their fields; :class:`ConfigError` names the key and the fix."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from omegaconf import DictConfig, OmegaConf

CHOICES: dict[str, tuple[str, ...]] = {
    "dataset.format": ("recbole_atomic", "amazon", "synthetic"),
    "dataset.missing_title": ("error", "drop", "id"),
    "dataset.preprocess.dedup": ("first", "last", "none"),
    "recommender.name": ("sasrec", "mf"),
    "recommender.loss": ("ce", "bce"),
    "logger.name": ("csv", "wandb"),
    "prompt.mode": ("behavior", "intention", "hybrid"),
    "prompt.injection": ("add", "replace"),
    "aligner.injection": ("add", "replace"),
    "aligner.projector": ("mlp2x_gelu", "linear", "identity"),
    "aligner.loss_weighting": ("token", "example"),
    "aligner.item_head_space": ("projected", "recommender", "both"),
    "aligner.projector_init": ("random", "title_lsq", "title_lsq_top1"),
    "llm.source": ("smollm2_gguf", "tiny_random", "pretrained"),
    "llm.dtype": ("float32", "bfloat16", "float16"),
    "logger.mode": ("offline", "online", "disabled"),
    "evaluation.model": ("aligned", "unaligned", "none"),
    "evaluation.split": ("valid", "test"),
    "evaluation.scoring": ("recai", "lenient"),
    "prompt.mask": ("prefix", "history"),
    "explain.model": ("aligned", "unaligned", "template", "template_random"),
    "explain.split": ("valid", "test"),
    "explain.decision": ("auto", "item_head", "interest_prompt", "explain_prompt"),
    "judge.name": ("none", "openai", "local"),
    "explain.score_predictor": ("minilm", "none"),
    "evaluation.calibration": ("prior", "accuracy"),
    "explain.calibration": ("prior", "accuracy"),
}

POSITIVE: tuple[str, ...] = (
    "recommender.hidden_size",
    "recommender.n_negatives",
    "recommender.train.batch_size",
    "recommender.train.eval_batch_size",
    "recommender.train.max_epochs",
    "dataset.preprocess.min_seq_len",
    "prompt.max_hist_len",
    "prompt.text_hist_len",
    "aligner.batch_size",
    "aligner.accumulate_grad_batches",
    "aligner.length_group_mega",
    "aligner.max_length",
    "aligner.budget_minutes",
    "aligner.budget_tokens_per_s",
    "aligner.lora_r",
    "evaluation.batch_size",
    "evaluation.num_beams",
    "explain.n_pairs",
    "explain.max_new_tokens",
    "explain.batch_size",
    "judge.concurrency",
)


REPORT_STAGE = (
    "report"  # the last step: every stage, then the report and the summary (recexplainer.report.summary)
)


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and the fix."""


def _select(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if node is None or part not in node:
            return None
        node = node[part]
    return node


def _validate_precisions(cfg: DictConfig) -> None:
    """Lightning's precision names for trainer.precision and the per-stage overrides (Lightning's own error
    would not name our key)."""
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT_STR

    allowed = typing.get_args(_PRECISION_INPUT_STR)
    for key in ("trainer.precision", "trainer.recommender_precision", "evaluation.precision"):
        value = _select(cfg, key)
        if value is not None and str(value) not in allowed and str(value) not in ("32", "64", "16", "bf16"):
            raise ConfigError(f"{key}={value!r} is not a precision; choose one of {', '.join(allowed)}")


def _validate_known_keys(node: DictConfig, path: str = "") -> None:
    """The schema is the whole truth: a key that no schema declares (``+recommender.hiden_size=32``: Hydra's
    ``+`` adds keys past the schema) is refused, naming the closest known key."""

    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        known = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if key not in known:
                name = f"{path}.{key}" if path else str(key)
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {path + '.' if path else ''}{close[0]}?" if close else ""
                raise ConfigError(
                    f"{name} is not a configuration key{hint} (keys of {path or 'the top level'}: "
                    f"{', '.join(known)})"
                )
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _validate_known_keys(child, f"{path}.{key}" if path else str(key))


def _import_plugins(modules: list[str]) -> None:
    """Import the user's modules (e.g. task kinds registered with ``recexplainer.tasks.register``)."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(
                f"plugins: cannot import {module!r} ({err}); give an importable module name (its folder on "
                "PYTHONPATH or installed)"
            ) from None


SIZE_KEYS = ("n_layers", "n_heads", "max_len", "inner_size", "max_epochs", "lora_r", "lora_alpha")


def _range_error(key: str, value: Any) -> str | None:
    """Why a value is out of range by what its key names (None: fine or not a ranged key)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if "dropout" in key and not 0 <= value < 1:
        return "must be in [0, 1) (a probability)"
    if (key == "lr" or key.endswith("_lr")) and value <= 0:
        return "must be > 0 (a learning rate)"
    if key == "weight_decay" and value < 0:
        return "must be >= 0"
    if (key.endswith("_size") or key in SIZE_KEYS) and value <= 0:
        return "must be > 0 (a size)"
    return None


def _validate_ranges(node: Any, path: str = "") -> None:
    """Probabilities, learning rates and sizes anywhere in the config (the recommender and dataset groups
    included, whose schemas are open), checked by their key names."""
    if not isinstance(node, DictConfig):
        return
    for key in node:
        full = f"{path}.{key}" if path else str(key)
        if OmegaConf.is_missing(node, key) or full.startswith("hydra"):
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            _validate_ranges(value, full)
            continue
        problem = _range_error(str(key), value)
        if problem:
            raise ConfigError(f"{full}={value} {problem}")


def _reached(cfg: DictConfig, stages: tuple[str, ...]) -> tuple[str, ...]:
    """The stages a run of ``cfg.stage`` goes through (the requested one and those before it)."""
    return stages[: stages.index(cfg.stage) + 1]


def _validate_task_names(cfg: DictConfig, stages: tuple[str, ...]) -> None:
    """Task lists name tasks of the tasks group (a typo would otherwise surface after the upstream stages
    ran, or silently drop a task); checked where the run reaches the stage that reads the list, so that
    ``tasks=none`` serves runs that stop before the alignment data."""
    known = list(cfg.tasks)
    reached = _reached(cfg, stages)
    for key, stage in (
        ("aligner.train_tasks", "aligner"),
        ("aligner.uncapped_tasks", "aligner"),
        ("aligner.item_head_tasks", "aligner"),
        ("evaluation.tasks", "evaluate"),
    ):
        if stage not in reached:
            continue
        names = _select(cfg, key)
        unknown = [n for n in names or [] if n not in known]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{key}: unknown task(s) {unknown}{hint}; the tasks group has {', '.join(known)}"
            )


def validate(cfg: DictConfig, stages: tuple[str, ...]) -> None:
    """Check choices and ranges that types cannot express; raise ConfigError naming the key."""
    _validate_known_keys(cfg)
    _import_plugins(cfg.get("plugins") or [])
    stages = (*stages, REPORT_STAGE) if REPORT_STAGE not in stages else stages
    if cfg.stage not in stages:
        raise ConfigError(f"stage={cfg.stage!r} is not a stage; choose one of {', '.join(stages)}")
    for key, allowed in CHOICES.items():
        value = _select(cfg, key)
        if value is not None and value not in allowed:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(allowed)}")
    for key in POSITIVE:
        value = _select(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{key}={value} must be positive")
    _validate_ranges(cfg)
    _validate_task_names(cfg, stages)
    if cfg.dataset.preprocess.min_seq_len < 3:
        raise ConfigError(
            "dataset.preprocess.min_seq_len must be >= 3: the leave-one-out split needs one train, "
            "one validation and one test item per user"
        )
    rec = cfg.recommender
    if rec.name == "sasrec" and rec.hidden_size % rec.n_heads:
        raise ConfigError(
            f"recommender.hidden_size={rec.hidden_size} must be divisible by recommender.n_heads={rec.n_heads}"
        )
    for key in ("seed", "aligner.seed"):  # the bounds of numpy / Lightning seeding
        value = _select(cfg, key)
        if value is not None and not 0 <= value < 2**32:
            raise ConfigError(f"{key}={value} must be in [0, 2**32)")
    if not 0.0 <= cfg.judge.max_failed_share <= 1.0:
        raise ConfigError(f"judge.max_failed_share={cfg.judge.max_failed_share} must be in [0, 1]")
    _validate_precisions(cfg)
    _validate_item_head(cfg, _reached(cfg, stages))
    _validate_prompt(cfg)
    _validate_evaluation(cfg)
    if cfg.dataset.format == "recbole_atomic" and not (cfg.dataset.path or cfg.dataset.asset):
        raise ConfigError("dataset.path is required for the recbole_atomic format (or dataset.asset)")


def _validate_item_head(cfg: DictConfig, reached: tuple[str, ...]) -> None:
    ac = cfg.aligner
    if ac.item_head_weight < 0 or ac.item_head_temperature <= 0:
        raise ConfigError(
            f"aligner.item_head_weight={ac.item_head_weight} must be >= 0 (0: no item head) and "
            f"aligner.item_head_temperature={ac.item_head_temperature} > 0"
        )
    if ac.item_head_weight > 0 and not ac.item_head_tasks:
        raise ConfigError(
            "aligner.item_head_tasks is empty but aligner.item_head_weight > 0: list the tasks whose examples train "
            "the item head (default [retrieval, interest, interest_hard]), or set aligner.item_head_weight=0"
        )
    if ac.item_head_weight > 0:
        from recexplainer.tasks import KINDS

        # only a task about a user's prefix has the recommender's distribution for its examples
        kinds = {name: KINDS.get(task.kind) for name, task in cfg.tasks.items()}
        userless = [t for t in ac.item_head_tasks if kinds.get(t) is not None and kinds[t].source != "user"]
        if userless:
            users = [name for name, kind in kinds.items() if kind is not None and kind.source == "user"]
            raise ConfigError(
                f"aligner.item_head_tasks: {userless} do not ask about a user's history: their examples have no "
                f"recommender distribution to train the item head on; choose among {', '.join(users)}"
            )
    if ac.title_distill_weight < 0 or ac.title_distill_temperature <= 0:
        raise ConfigError(
            f"aligner.title_distill_weight={ac.title_distill_weight} must be >= 0 (0: none) and "
            f"aligner.title_distill_temperature={ac.title_distill_temperature} > 0"
        )
    if ac.title_distill_weight > 0 and cfg.prompt.mask != "prefix" and "aligner" in reached:
        raise ConfigError(
            f"aligner.title_distill_weight={ac.title_distill_weight} needs prompt.mask=prefix, got "
            f"{cfg.prompt.mask!r}: its target excludes the prefix items the examples carry, not the whole "
            "consumed history. Add aligner.title_distill_weight=0 to train this mask without it"
        )
    if ac.item_head_weight > 0 and cfg.prompt.mask != "prefix" and "aligner" in reached:
        raise ConfigError(
            f"aligner.item_head_weight={ac.item_head_weight} (an item head) needs prompt.mask=prefix, got "
            f"{cfg.prompt.mask!r}: the head's target excludes the prefix items the examples carry, not the whole "
            "consumed history. Add aligner.item_head_weight=0 to train this mask without the item head"
        )
    ex = cfg.explain
    if ex.decision == "item_head" and "explain" in reached and ex.model in ("aligned", "unaligned"):
        if ex.model == "unaligned" or ac.item_head_weight == 0:
            raise ConfigError(
                f"explain.decision=item_head reads the aligner's item head, and explain.model={ex.model} with "
                f"aligner.item_head_weight={ac.item_head_weight} has none: set explain.decision=interest_prompt "
                "(the LLM's answer to the task-3 question), or explain an aligner with an item head"
            )


def _validate_evaluation(cfg: DictConfig) -> None:
    from recexplainer.evaluate.predictors import BaselinePredictor

    ev = cfg.evaluation
    for name in ev.baselines:
        if name not in BaselinePredictor.NAMES:
            raise ConfigError(
                f"evaluation.baselines: unknown baseline {name!r}; choose from {', '.join(BaselinePredictor.NAMES)}"
            )
    if ev.few_shot < 0 or (ev.few_shot and ev.model != "unaligned"):
        raise ConfigError("evaluation.few_shot must be >= 0 and is only for evaluation.model=unaligned")
    if ev.max_examples is not None and ev.max_examples <= 0:
        raise ConfigError(f"evaluation.max_examples={ev.max_examples} must be positive (or null for all)")
    if not 0 < ev.fuzzy_cutoff <= 1:
        raise ConfigError(f"evaluation.fuzzy_cutoff={ev.fuzzy_cutoff} must be in (0, 1]")
    if ev.beam_width is not None and ev.beam_width < ev.num_beams:
        raise ConfigError(
            f"evaluation.beam_width={ev.beam_width} must be >= evaluation.num_beams={ev.num_beams} "
            "(the candidates are the best distinct titles of the search), or null for num_beams"
        )
    if ev.model == "none" and not ev.baselines:
        raise ConfigError("evaluation.model=none needs at least one entry in evaluation.baselines")
    for group, split in (("evaluation", ev.split), ("explain", cfg.explain.split)):
        n = cfg[group].calibration_examples
        if n < 0:
            raise ConfigError(f"{group}.calibration_examples={n} must be >= 0 (0: decide at P(yes) 0.5)")
        if n and split == "valid":
            raise ConfigError(
                f"{group}.calibration_examples={n} fits the LLM's decision threshold on the valid split, which "
                f"{group}.split=valid is: set {group}.calibration_examples=0"
            )
    for name in ("{user}", "{item}"):
        if cfg.explain.template.count(name) != 1:
            raise ConfigError(f"explain.template must contain {name} exactly once")
    if cfg.explain.template.count("{evidence}") > 1:
        raise ConfigError("explain.template may contain {evidence} at most once")
    if cfg.judge.name == "openai" and not (cfg.judge.base_url and cfg.judge.model):
        raise ConfigError(
            "judge=openai needs judge.base_url and judge.model (e.g. judge.base_url=http://localhost:8000/v1)"
        )


def _validate_prompt(cfg: DictConfig) -> None:
    from recexplainer import tasks as kinds
    from recexplainer.alignment_data.templates import TemplateError, validate_format

    try:
        validate_format("explain.evidence", cfg.explain.evidence, {"up", "down"})
        validate_format("prompt.user_format", cfg.prompt.user_format, {"placeholder", "titles"})
        validate_format("prompt.item_format", cfg.prompt.item_format, {"placeholder", "title"})
        for name, task in cfg.tasks.items():
            kinds.validate(name, task)
            for key in ("top_fraction", "bottom_fraction", "eval_items_fraction", "yes_share"):
                if not 0 <= task[key] <= 1:
                    raise ConfigError(f"tasks.{name}.{key}={task[key]} must be in [0, 1]")
    except TemplateError as err:
        raise ConfigError(str(err)) from None
    prefix = cfg.explain.answer_prefix
    for name, task in cfg.tasks.items():
        if task.kind == "explanation" and prefix:
            for key in ("yes_templates", "no_templates"):
                bad = [t for t in task[key] if not t.startswith(prefix)]
                if bad:
                    raise ConfigError(
                        f"tasks.{name}.{key}: {bad[0]!r} does not start with explain.answer_prefix "
                        f"{prefix!r}; the explain stage writes that prefix and lets the LLM go on from it"
                    )
    if cfg.prompt.user_placeholder == cfg.prompt.item_placeholder:
        raise ConfigError("prompt.user_placeholder and prompt.item_placeholder must differ")
    shown = cfg.prompt.get("text_hist_len")
    if shown is not None and shown > cfg.prompt.max_hist_len:
        raise ConfigError(
            f"prompt.text_hist_len={shown} exceeds prompt.max_hist_len={cfg.prompt.max_hist_len}: "
            "a prefix holds at most max_hist_len items (null shows them all)"
        )
