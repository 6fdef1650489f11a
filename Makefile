# RecExplainer: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch by default; GPU users: make setup TORCH_SPEC=torch (or their CUDA build)
TORCH_SPEC ?= torch==2.13.0
ARGS ?=
ARTIFACTS ?= artifacts

.DEFAULT_GOAL := help
.PHONY: help setup assets run test test-slow lint format bench-recommender bench-alignment-data bench-aligner bench-aligner-step bench-evaluation bench-explain bench-budget bench gpu-wheels gpu-check gpu-quality evaluate quick paper-table report report-browser clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'
	@echo "  variables: ARGS='key=value ...' (Hydra overrides), TORCH_SPEC, VENV, PYTHON"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed assets ## create .venv, install the package (torch pinned), fetch offline assets

assets: $(VENV)/.installed ## fetch the offline assets (MovieLens-100K, SmolLM2 GGUF) into the cache; idempotent
	$(PY) -m recexplainer.assets fetch

run: setup ## the whole method on the embedded default (MovieLens-100K), then the report; overrides via ARGS=...
	$(VENV)/bin/recexplainer $(ARGS)

quick: setup ## the whole pipeline on generated data with SmolLM2 in minutes (a smoke run)
	$(VENV)/bin/recexplainer experiment=quick $(ARGS)

paper-table: setup ## B / I / H grid + unaligned LLM + baselines on the default dataset, then the report (hours on a CPU)
	$(VENV)/bin/recexplainer -m experiment=paper_grid $(ARGS)
	$(VENV)/bin/recexplainer stage=evaluate prompt=behavior evaluation.model=unaligned evaluation.baselines=[] $(ARGS)
	$(PY) -m recexplainer.report --root $(ARTIFACTS)

evaluate: setup ## whole pipeline up to the evaluate stage (prompt=hybrid by default; ARGS='prompt=intention')
	$(VENV)/bin/recexplainer stage=evaluate $(ARGS)

report: $(VENV)/.installed ## index.html, tables and plots from every stage folder into $(ARTIFACTS)/report/; prints the paths
	$(PY) -m recexplainer.report --root $(ARTIFACTS)

report-browser: $(VENV)/.installed ## render the HTML report in headless Chromium (installs Debian's chromium if missing; slow test)
	@test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)
	$(PY) -m pytest -q -m slow tests/test_report_browser.py

test: $(VENV)/.installed ## fast test suite (offline, under a minute on 2 cores)
	$(PY) -m pytest -q

test-slow: setup ## slow tests (about 5 min): every stage end to end on tiny models, SmolLM2 GGUF conversion, a sweep, CPU DDP
	$(PY) -m pytest -q -m slow

lint: $(VENV)/.installed ## ruff lint and format check
	$(VENV)/bin/ruff check recexplainer tests experiments
	$(VENV)/bin/ruff format --check recexplainer tests experiments

format: $(VENV)/.installed ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix recexplainer tests experiments
	$(VENV)/bin/ruff format recexplainer tests experiments

bench-recommender: setup ## SASRec on ml-100k (common protocol; ARGS='--seeds 42 43 44' for three seeds); benchmarks/recommender.json
	$(PY) experiments/bench_recommender.py --out benchmarks/recommender.json $(ARGS)

bench-alignment-data: setup ## alignment data build time on ml-100k (default and paper task sets); benchmarks/alignment_data.json
	$(PY) experiments/bench_alignment_data.py --out benchmarks/alignment_data.json

bench-aligner: setup ## aligner training tokens/s vs a Hugging Face Trainer + peft baseline (ARGS='--precision 32-true,bf16-mixed'); benchmarks/aligner.json
	$(PY) experiments/bench_aligner.py --out benchmarks/aligner.json $(ARGS)

bench-aligner-step: setup ## what each CPU speed setting of the aligner buys (LoRA dropout, attention mask, bf16 frozen weights) on the default run's batches; benchmarks/aligner_step.json
	$(VENV)/bin/recexplainer stage=alignment_data trainer.enable_progress_bar=false
	$(PY) experiments/bench_aligner_step.py --out benchmarks/aligner_step.json $(ARGS)

bench-evaluation: setup ## evaluation examples/s per task, batched vs one at a time (ARGS='--precision bf16' on CPUs with AMX); benchmarks/evaluation.json
	$(PY) experiments/bench_evaluation.py --out benchmarks/evaluation.json $(ARGS)

bench-explain: setup ## explanations side by side on the same pairs: the aligned LLM, the paper's setting (trains its own aligner), the unaligned LLM, the template ceiling and random floor; report
	$(VENV)/bin/recexplainer stage=explain $(ARGS)
	$(VENV)/bin/recexplainer stage=explain explain.model=template $(ARGS)
	$(VENV)/bin/recexplainer stage=explain explain.model=template_random $(ARGS)
	$(VENV)/bin/recexplainer stage=explain explain.model=unaligned $(ARGS)
	$(VENV)/bin/recexplainer stage=explain experiment=explain_paper $(ARGS)
	$(PY) -m recexplainer.report --root $(ARTIFACTS)

bench-budget: setup ## alignment and explanation quality vs aligner budget (10 / 25 / 60 / 120 min, every task; task 1 constrained too), then the report (hours)
	$(VENV)/bin/recexplainer -m experiment=budget_curve $(ARGS)
	$(VENV)/bin/recexplainer -m experiment=budget_curve evaluation.tasks=[retrieval] evaluation.constrained=true $(ARGS)
	$(VENV)/bin/recexplainer -m experiment=budget_curve stage=explain $(ARGS)
	$(PY) -m recexplainer.report --root $(ARTIFACTS)

bench: bench-recommender bench-alignment-data bench-aligner bench-aligner-step bench-evaluation bench-explain ## every benchmark (run alone on an idle machine)

# Wheels for a GPU machine without network (Python 3.12, CUDA torch of its own): the pure-Python packages it
# lacks (hydra-core, omegaconf, antlr4, platformdirs, gguf) and DeepSpeed with its missing dependencies, built here
# with DS_BUILD_OPS=0 (ops are JIT-compiled there when needed). The GPU scripts install .whl/*.whl into a
# temporary site-packages folder.
GPU_PY ?= 3.12
gpu-wheels: setup ## fetch / build the wheels an offline GPU machine needs into .whl/ (copy .whl/ there)
	mkdir -p .whl
	$(PY) -m pip wheel -q -w .whl --no-deps 'hydra-core>=1.3.2,<1.4' 'omegaconf>=2.3,<2.4' antlr4-python3-runtime==4.9.3 platformdirs gguf
	$(PY) -m pip download -q -d .whl --only-binary=:all: --python-version $(GPU_PY) \
	    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
	    hjson pydantic   # with their dependencies, for the GPU machine's Python
	DS_BUILD_OPS=0 $(PY) -m pip wheel -q -w .whl --no-deps --no-build-isolation --no-binary deepspeed deepspeed
	ls -la .whl

GPU_OUT ?= benchmarks/gpu-check
gpu-check: ## on a GPU machine (<15 min): GPU/bf16/DDP/FSDP/DeepSpeed code paths, bf16 tokens/s of 135M / 1B shapes, evaluation batched vs single; files in $(GPU_OUT)/
	OUT=$(GPU_OUT) PY=$(if $(wildcard $(PY)),$(PY),python3) bash experiments/gpu_check.sh
	OUT=$(GPU_OUT) PY=$(if $(wildcard $(PY)),$(PY),python3) bash experiments/gpu_check_aligner.sh
	OUT=$(GPU_OUT) PY=$(if $(wildcard $(PY)),$(PY),python3) bash experiments/gpu_check_evaluation.sh

gpu-quality: ## on a GPU machine (<10 min): experiment=gpu (the default recipe, real SmolLM2-135M, ~11 epochs) stage by stage; files in $(GPU_OUT)/
	OUT=$(GPU_OUT) PY=$(if $(wildcard $(PY)),$(PY),python3) bash experiments/gpu_check_quality.sh

clean: ## delete artifacts and caches (not the venv, not the asset cache)
	rm -rf $(ARTIFACTS) outputs multirun .pytest_cache .ruff_cache
