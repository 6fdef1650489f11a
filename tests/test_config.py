import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from recexplainer.cli import CONF_DIR
from recexplainer.config import ConfigError, validate
from recexplainer.pipeline import STAGES

from .helpers import compose_config

REQUIRED = {
    "recbole_atomic": ["dataset.name=mine", "dataset.path=/tmp/mine"],
    "amazon": ["dataset.name=games", "dataset.reviews_file=/tmp/r.json", "dataset.meta_file=/tmp/m.json"],
    "paper_grid_amazon": [
        "dataset.name=games",
        "dataset.reviews_file=/tmp/r.json",
        "dataset.meta_file=/tmp/m.json",
    ],
    "paper_grid_steam": ["dataset.path=/tmp/steam"],
    "none": ["stage=recommender"],  # tasks=none: for runs that stop before the alignment data
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "option", [o for o in sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))]
)
def test_every_sweep_point_of_an_experiment_composes(option):
    """Each value of an experiment's `hydra.sweeper.params` composes and validates as an override."""
    import yaml

    spec = yaml.safe_load((CONF_DIR / "experiment" / f"{option}.yaml").read_text()) or {}
    params = spec.get("hydra", {}).get("sweeper", {}).get("params", {})
    for key, values in params.items():
        for value in str(values).split(","):
            point = compose_config([f"experiment={option}", f"{key}={value}"] + REQUIRED.get(option, []))
            validate(point, tuple(STAGES))
            assert OmegaConf.select(point, key) is not None


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "group,option",
    [
        (g, o)
        for g in ("dataset", "recommender", "prompt", "tasks", "trainer", "logger", "paths", "experiment")
        for o in _options(g)
    ],
)
def test_every_config_option_composes_and_validates(group, option):
    cfg = compose_config([f"{group}={option}"] + REQUIRED.get(option, []))
    validate(cfg, tuple(STAGES))
    if group in ("dataset", "recommender"):
        assert cfg[group].name  # the schema's fields are all there


def test_default_config_is_ml100k_sasrec_on_cpu():
    cfg = compose_config([])
    assert (cfg.dataset.name, cfg.recommender.name, cfg.trainer.accelerator) == ("ml-100k", "sasrec", "cpu")
    assert cfg.logger.name == "csv" and cfg.stage == "report"  # the whole method


def test_misspelled_key_fails_naming_the_key():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["dataset.preprocess.usr_core=3"])
    assert "usr_core" in str(err.value.__cause__ or err.value)


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["recommender.n_layers=two"])
    assert "n_layers" in str(err.value.__cause__ or err.value)


def test_misspelled_key_in_a_user_yaml_fails(tmp_path: Path):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "mine.yaml").write_text(
        "defaults:\n  - schema_recbole_atomic\n  - _self_\nname: mine\npath: /tmp\ntitel_field: title\n"
    )
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)) as err:
        compose_config([f"hydra.searchpath=[file://{tmp_path}]", "dataset=mine"])
    assert "titel_field" in str(err.value) + str(err.value.__cause__)


@pytest.mark.slow
@pytest.mark.parametrize(
    "override,key",
    [
        ("dataset.preprocess.dedup=fist", "dataset.preprocess.dedup"),
        ("recommender.loss=hinge", "recommender.loss"),
        ("logger.mode=sometimes", "logger.mode"),
        ("recommender.train.batch_size=0", "recommender.train.batch_size"),
        ("dataset.preprocess.min_seq_len=2", "dataset.preprocess.min_seq_len"),
        ("recommender.n_heads=3", "recommender.hidden_size"),
        ("stage=trian", "stage"),
        ("evaluation.beam_width=3", "evaluation.beam_width"),
        ("aligner.length_group_mega=0", "aligner.length_group_mega"),
        ("aligner.seed=-1", "aligner.seed"),
        ("trainer.precision=bf17-mixed", "trainer.precision"),
        ("trainer.recommender_precision=fp32", "trainer.recommender_precision"),
        ("evaluation.precision=half", "evaluation.precision"),
        ("explain.evidence='{up} {sideways}'", "explain.evidence"),
        ("explain.template='{user} {item} {evidence} {evidence}'", "explain.template"),
        ("tasks.explanation.evidence=null", "tasks.explanation.evidence"),
        ("recommender.dropout=1.5", "recommender.dropout=1.5 must be in [0, 1)"),
        ("recommender.attn_dropout=-0.1", "recommender.attn_dropout"),
        ("aligner.lora_dropout=1.0", "aligner.lora_dropout"),
        ("recommender.train.lr=-0.001", "recommender.train.lr=-0.001 must be > 0"),
        ("aligner.lr=0", "aligner.lr"),
        ("aligner.projector_lr=-1", "aligner.projector_lr"),
        ("recommender.n_layers=0", "recommender.n_layers=0 must be > 0"),
        ("recommender.inner_size=-4", "recommender.inner_size"),
        ("aligner.train_tasks=[nosuch]", "aligner.train_tasks: unknown task(s) ['nosuch']"),
        ("aligner.train_tasks=[retrieval,nosuch]", "aligner.train_tasks: unknown task(s) ['nosuch']"),
        ("evaluation.tasks=[retreival]", "did you mean 'retrieval'?"),
        ("aligner.uncapped_tasks=[explanations]", "aligner.uncapped_tasks: unknown task(s) ['explanations']"),
    ],
)
def test_invalid_values_fail_at_start_up_naming_the_key(override, key):
    cfg = compose_config([override])
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate(cfg, tuple(STAGES))


@pytest.mark.parametrize(
    ("override", "says"),
    [
        (
            "+recommender.hiden_size=32",
            "recommender.hiden_size is not a configuration key; did you mean recommender.hidden_size?",
        ),
        ("+judge.api_key=SECRET", "judge.api_key is not a configuration key"),
        ("+aligner.lr_projector=0.1", "aligner.lr_projector is not a configuration key"),
        ("+nosuch=1", "nosuch is not a configuration key"),
    ],
)
def test_keys_no_schema_declares_are_refused_even_with_plus(override, says):
    cfg = compose_config([override])
    with pytest.raises(ConfigError, match=re.escape(says)):
        validate(cfg, tuple(STAGES))


@pytest.mark.parametrize(
    "override",
    [
        "+judge.api_key=PLANTED-SECRET-4711",
        "++judge.api_key=PLANTED-SECRET-4711",
        "+judge.token=PLANTED-SECRET-4711",
        "judge.base_url=http://localhost:1/sk-PLANTEDSECRET4711abcdef",
    ],
)
def test_a_planted_secret_never_reaches_a_file(override, tmp_path):
    """Refused before Hydra starts (Hydra saves every override in the run folder before our checks)."""
    artifacts = tmp_path / "artifacts"
    cmd = [sys.executable, "-m", "recexplainer.cli", override, "stage=data", f"paths.artifacts={artifacts}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode != 0
    assert "looks like a secret" in done.stderr and "judge.api_key_env" in done.stderr
    assert "PLANTED" not in done.stderr + done.stdout  # the message does not echo it
    written = [p for p in tmp_path.rglob("*") if p.is_file() and b"PLANTED" in p.read_bytes()]
    assert written == []


def test_secret_detection_leaves_ordinary_keys_alone():
    from recexplainer.cli import secret_override

    assert secret_override(["judge.api_key_env=MY_KEY", "explain.max_new_tokens=9", "-m", "seed=1,2"]) is None
    assert secret_override(["judge.max_tokens=5", "judge.base_url=http://localhost:8000/v1"]) is None
