#!/usr/bin/env bash
# GPU code-path check of the aligner, evaluation and explanation stages (run on a lent GPU machine): the
# whole pipeline on synthetic data with the tiny random Llama under trainer=gpu (bf16-mixed) and trainer=ddp
# (1 device). Real LLM weights cannot travel to that machine (size limit), so this checks code paths, not
# quality; then bf16 training throughput for the SmolLM2-135M, 1B- and 8B-Llama shapes (random weights:
# experiments/bench_gpu_aligner.py), and that trainer=fsdp and trainer=deepspeed start and take steps.
# Files in $OUT: log.txt, metrics.jsonl (one line per pipeline run), throughput.jsonl. GPU_CHECK_DEADLINE
# (epoch seconds, optional) bounds the whole check: steps get what time is left and are skipped past it.
source "$(dirname "$0")/gpu_common.sh"
"$PY" -c "import torch, transformers, peft, lightning; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/log.txt"
TINY="dataset=synthetic llm=tiny_random llm.tiny_layers=4 llm.tiny_hidden=256 recommender.train.max_epochs=5
  aligner.batch_size=16 aligner.accumulate_grad_batches=1 aligner.max_epochs=2 evaluation.max_examples=32
  evaluation.baselines=[popularity] explain.n_pairs=16 explain.score_predictor=none explain.max_new_tokens=32"
i=0
for t in "stage=evaluate trainer=gpu" "stage=explain trainer=gpu" "stage=evaluate trainer=ddp trainer.devices=1" \
         "stage=aligner trainer=gpu aligner.injection=replace aligner.gradient_checkpointing=true"; do
  i=$((i+1)); b=$(budget 150); SECONDS=0
  [ "$b" -lt 20 ] && { echo "== run $i skipped (deadline): $t" | tee -a "$OUT/log.txt"; continue; }
  echo "== run $i: $t" | tee -a "$OUT/log.txt"
  # runs 1 and 2 share one artifact folder: explain reuses run 1's aligner
  art=/tmp/gc-aln-$i; [ $i -eq 2 ] && art=/tmp/gc-aln-1
  timeout "$b" "$PY" -m recexplainer.cli $TINY $t paths.artifacts=$art trainer.enable_progress_bar=false >> "$OUT/log.txt" 2>&1
  rc=$?; echo "rc=$rc wall_s=$SECONDS" | tee -a "$OUT/log.txt"
  st=${t%% *}; st=${st#stage=}
  m=$(ls -t $art/$st/*/metrics.json 2>/dev/null | head -1)
  [ -n "$m" ] && "$PY" - "$m" "$t" "$rc" "$SECONDS" <<'PY' | tee -a "$OUT/metrics.jsonl"
import json, sys
m = json.load(open(sys.argv[1]))
print(json.dumps({"run": sys.argv[2], "rc": int(sys.argv[3]), "wall_s": int(sys.argv[4]), **m}))
PY
done
grep -E "Error|error" "$OUT/log.txt" | head -20

echo "== throughput (bf16-mixed, random weights, LoRA r16 + projectors)" | tee -a "$OUT/log.txt"
for a in "--arch smollm2_135m --batch 16 --steps 30" "--arch llama_1b --batch 8 --steps 20" \
         "--arch llama_8b --batch 8 --steps 12"; do
  b=$(budget 150); SECONDS=0
  [ "$b" -lt 30 ] && { echo "skipped (deadline): $a" | tee -a "$OUT/log.txt"; continue; }
  timeout "$b" "$PY" experiments/bench_gpu_aligner.py $a --precision bf16-mixed --out "$OUT/throughput.jsonl" \
    >> "$OUT/log.txt" 2>&1
  echo "rc=$? wall_s=$SECONDS $a" | tee -a "$OUT/log.txt"
done
[ -f "$OUT/throughput.jsonl" ] && cat "$OUT/throughput.jsonl"

echo "== strategies: fsdp and deepspeed ZeRO-2 start and train 2 steps (1 device)" | tee -a "$OUT/log.txt"
"$PY" -c "import deepspeed" 2>/dev/null || "$PY" -m pip install -q --no-index --find-links .whl deepspeed \
  >> "$OUT/log.txt" 2>&1 || echo "deepspeed not installable here (make gpu-wheels puts its wheel in .whl/)" | tee -a "$OUT/log.txt"
for t in fsdp deepspeed; do
  b=$(budget 120); SECONDS=0
  [ "$b" -lt 20 ] && { echo "trainer=$t skipped (deadline)" | tee -a "$OUT/log.txt"; continue; }
  echo "== trainer=$t" >> "$OUT/log.txt"
  timeout "$b" "$PY" -m recexplainer.cli stage=aligner dataset=synthetic llm=tiny_random trainer=$t trainer.devices=1 \
    recommender.train.max_epochs=2 aligner.batch_size=8 aligner.accumulate_grad_batches=1 aligner.max_steps=2 \
    paths.artifacts=/tmp/gc-$t trainer.enable_progress_bar=false >> "$OUT/log.txt" 2>&1
  rc=$?
  echo "trainer=$t rc=$rc wall_s=$SECONDS" | tee -a "$OUT/log.txt"
done
