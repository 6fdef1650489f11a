#!/usr/bin/env bash
# Evaluation speed on a lent GPU machine (batched vs one example at a time): builds the
# ml-100k alignment data (recommender on the GPU, tiny_random LLM config: no real weights needed), then runs
# experiments/bench_evaluation.py with a randomly initialised SmolLM2-135M-shaped Llama on cuda, bf16 and
# fp32 (EVAL_PRECISIONS="bf16 bf16-true fp32" adds bf16 weights). Random weights decode every example to the
# length bound in both modes (the same work each side).
# Files in $OUT: evaluation-gpu-bf16.json, evaluation-gpu-fp32.json, log-evaluation.txt. GPU_CHECK_DEADLINE
# (epoch seconds, optional) bounds the whole check. A CPU dry run of the script itself:
#   EVAL_DEVICE=cpu EVAL_TRAINER=cpu EVAL_PER_TASK=4 EVAL_SHAPE=tiny EVAL_EXTRA=dataset=synthetic bash experiments/gpu_check_evaluation.sh
source "$(dirname "$0")/gpu_common.sh"
LOG="$OUT/log-evaluation.txt"
ART=${EVAL_ARTIFACTS:-/tmp/gc-eval}
DEVICE=${EVAL_DEVICE:-cuda}; TRAINER=${EVAL_TRAINER:-gpu}; N=${EVAL_PER_TASK:-16}; SHAPE=${EVAL_SHAPE:-smollm2_135m}
UP="trainer=$TRAINER llm=tiny_random paths.artifacts=$ART trainer.enable_progress_bar=false num_threads=null ${EVAL_EXTRA:-}"
echo "== upstream: alignment data (recommender with trainer=$TRAINER)" | tee -a "$LOG"
SECONDS=0
timeout "$(budget 180)" "$PY" -m recexplainer.cli stage=alignment_data $UP >> "$LOG" 2>&1
echo "rc=$? wall_s=$SECONDS" | tee -a "$LOG"
for p in ${EVAL_PRECISIONS:-bf16 fp32}; do   # also bf16-true (bf16 weights: evaluation.precision=bf16-true)
  b=$(budget 240)
  [ "$b" -lt 30 ] && { echo "== $p skipped (deadline)" | tee -a "$LOG"; continue; }
  echo "== bench_evaluation $DEVICE $p" | tee -a "$LOG"
  SECONDS=0
  timeout "$b" "$PY" experiments/bench_evaluation.py --device "$DEVICE" --precision "$p" --random-weights "$SHAPE" \
    --per-task "$N" --batch "$N" --threads 4 --out "$OUT/evaluation-gpu-$p.json" $UP >> "$LOG" 2>&1
  echo "rc=$? wall_s=$SECONDS" | tee -a "$LOG"
done
tail -20 "$LOG"
