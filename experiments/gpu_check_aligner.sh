#!/usr/bin/env bash
# GPU code-path check of the aligner (run on a lent GPU machine): the whole pipeline up to the aligner on
# synthetic data with the tiny random Llama, under trainer=gpu (bf16-mixed) and trainer=ddp (1 device).
# Real LLM weights cannot travel to that machine (size limit), so this checks code paths, not quality;
# then bf16 training throughput for the SmolLM2-135M and 1B-Llama shapes (random weights:
# experiments/bench_gpu_aligner.py), and that trainer=fsdp and trainer=deepspeed start and take steps.
set -uo pipefail
PY=${PY:-python3}   # make gpu-check passes the venv python
OUT=${OUT:-/tmp/gpu-check-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
[ -d .devcache ] && export RECEXPLAINER_CACHE=${RECEXPLAINER_CACHE:-$PWD/.devcache}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
"$PY" -c "import torch, transformers, peft, lightning; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
i=0
for t in "trainer=gpu" "trainer=ddp trainer.devices=1" "trainer=gpu aligner.injection=replace aligner.gradient_checkpointing=true"; do
  i=$((i+1)); SECONDS=0
  echo "== run $i: $t" | tee -a "$OUT/log.txt"
  timeout 200 "$PY" -m recexplainer.cli stage=aligner dataset=synthetic llm=tiny_random llm.tiny_layers=4 llm.tiny_hidden=256 \
    recommender.train.max_epochs=5 aligner.batch_size=16 aligner.accumulate_grad_batches=1 aligner.max_epochs=2 \
    $t paths.artifacts=/tmp/art-$i trainer.enable_progress_bar=false >> "$OUT/log.txt" 2>&1
  echo "rc=$? wall_s=$SECONDS" | tee -a "$OUT/log.txt"
  m=$(ls /tmp/art-$i/aligner/*/metrics.json 2>/dev/null | head -1)
  [ -n "$m" ] && cp "$m" "$OUT/aligner-metrics-$i.json" && "$PY" -c "
import json,sys; m=json.load(open('$m')); print('$t', {k: round(v, 3) for k, v in m.items() if k.startswith(('train/', 'valid/', 'aligner/optimizer'))})"
done
grep -E "Error|error" "$OUT/log.txt" | head -20

echo "== throughput (bf16-mixed, random weights, LoRA r16 + projectors)" | tee -a "$OUT/log.txt"
for a in "--arch smollm2_135m --batch 16 --steps 40" "--arch llama_1b --batch 8 --steps 30"; do
  SECONDS=0
  timeout 240 "$PY" experiments/bench_gpu_aligner.py $a --precision bf16-mixed --out "$OUT/throughput.jsonl" \
    >> "$OUT/log.txt" 2>&1
  echo "rc=$? wall_s=$SECONDS $a" | tee -a "$OUT/log.txt"
done
[ -f "$OUT/throughput.jsonl" ] && cat "$OUT/throughput.jsonl"

echo "== strategies: fsdp and deepspeed ZeRO-2 start and train 2 steps (1 device)" | tee -a "$OUT/log.txt"
"$PY" -c "import deepspeed" 2>/dev/null || "$PY" -m pip install -q --no-index --find-links .whl deepspeed \
  >> "$OUT/log.txt" 2>&1 || echo "deepspeed not installable here (add its wheel to .whl/)" | tee -a "$OUT/log.txt"
for t in fsdp deepspeed; do
  SECONDS=0
  timeout 200 "$PY" -m recexplainer.cli stage=aligner dataset=synthetic llm=tiny_random trainer=$t trainer.devices=1 \
    recommender.train.max_epochs=2 aligner.batch_size=8 aligner.accumulate_grad_batches=1 aligner.max_steps=2 \
    paths.artifacts=/tmp/art-$t trainer.enable_progress_bar=false >> "$OUT/log-$t.txt" 2>&1
  rc=$?
  echo "trainer=$t rc=$rc wall_s=$SECONDS" | tee -a "$OUT/log.txt"
  [ $rc -ne 0 ] && grep -E "Error|error" "$OUT/log-$t.txt" | tail -3
done
