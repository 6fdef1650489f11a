#!/usr/bin/env bash
# Early-quality reading of the default recipe with the real SmolLM2-135M on a lent GPU (under 10 minutes):
# `recexplainer experiment=gpu`, the whole method on MovieLens-100K (the aligner on every training example for
# about 11 epochs, 64 examples per step), stage by stage: the aligner (with the data, recommender and alignment
# data before it), the evaluate stage (task 1 free and read off the item head, task 3, task 3-hard, the
# baselines), then the explanations (without the MiniLM score predictor: that asset rarely travels) and the report.
# QUALITY_MINUTES sets aligner.budget_minutes (default 10: about 4.5 minutes of training on an H200).
# Expects the ml-100k and smollm2-135m-gguf assets in the cache ($RECEXPLAINER_CACHE, or .devcache/ in the
# repository root) and the wheels of `make gpu-wheels` (gguf included) in .whl/ where the machine lacks them.
# Files in $OUT: quality-aligner.json, quality-evaluate.json, quality-explain.json (the stages' metrics, with the
# wall seconds of each command), quality-summary.txt (the printed summary), log-quality.txt.
# A CPU dry run of the script itself (tiny model, generated data):
#   QUALITY_TRAINER=cpu QUALITY_MINUTES=0.2 \
#   QUALITY_EXTRA="dataset=synthetic llm=tiny_random aligner.budget_tokens_per_s=155 evaluation.max_examples=16 explain.n_pairs=8" \
#   bash experiments/gpu_check_quality.sh
source "$(dirname "$0")/gpu_common.sh"
LOG="$OUT/log-quality.txt"
ART=${QUALITY_ARTIFACTS:-/tmp/gc-quality}
# One set of overrides for every command, so each stage reuses the cached folders of the one before.
# shellcheck disable=SC2206
ARGS=(experiment=gpu trainer="${QUALITY_TRAINER:-gpu}" paths.artifacts="$ART" trainer.enable_progress_bar=false
  num_threads=null aligner.budget_minutes="${QUALITY_MINUTES:-10}" explain.score_predictor=none ${QUALITY_EXTRA:-})
"$PY" -c "import torch, transformers, peft, lightning; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" | tee -a "$LOG"

declare -A WALL
for st in aligner evaluate report; do   # report = the explanations, then the report and the summary
  case $st in aligner) want=420 ;; evaluate) want=240 ;; report) want=180 ;; esac
  b=$(budget $want)
  [ "$b" -lt 30 ] && { echo "== stage=$st skipped (deadline)" | tee -a "$LOG"; continue; }
  echo "== stage=$st (up to ${b} s)" | tee -a "$LOG"
  SECONDS=0
  timeout "$b" "$PY" -m recexplainer.cli stage=$st "${ARGS[@]}" > "$OUT/quality-$st.out" 2>&1
  rc=$?; WALL[$st]=$SECONDS
  cat "$OUT/quality-$st.out" >> "$LOG"; rm -f "$OUT/quality-$st.out"
  echo "stage=$st rc=$rc wall_s=$SECONDS" | tee -a "$LOG"
done
for st in aligner evaluate explain; do
  m=$(ls -t "$ART"/$st/*/metrics.json 2>/dev/null | head -1)
  [ -z "$m" ] && continue
  "$PY" - "$m" "${WALL[$st]:-${WALL[report]:-0}}" > "$OUT/quality-$st.json" <<'PY'
import json, sys
metrics = json.load(open(sys.argv[1]))
print(json.dumps({"folder": sys.argv[1].rsplit("/", 2)[-2], "command_wall_s": int(sys.argv[2]), **metrics}, indent=1))
PY
done
# the summary the run printed: from its first line to the report path
sed -n '/^RecExplainer: /,/index.html/p' "$LOG" > "$OUT/quality-summary.txt"
tail -40 "$LOG"
