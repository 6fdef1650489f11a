#!/usr/bin/env bash
# GPU code-path check of the aligner (run on a lent GPU machine): the whole pipeline up to the aligner on
# synthetic data with the tiny random Llama, under trainer=gpu (bf16-mixed) and trainer=ddp (1 device).
# Real LLM weights cannot travel to that machine (size limit), so this checks code paths, not quality.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export RECEXPLAINER_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "import torch, transformers, peft, lightning; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
i=0
for t in "trainer=gpu" "trainer=ddp trainer.devices=1" "trainer=gpu aligner.injection=replace aligner.gradient_checkpointing=true"; do
  i=$((i+1)); SECONDS=0
  echo "== run $i: $t" | tee -a "$OUT/log.txt"
  timeout 200 python3 -m recexplainer.cli stage=aligner dataset=synthetic llm=tiny_random llm.tiny_layers=4 llm.tiny_hidden=256 \
    recommender.train.max_epochs=5 aligner.batch_size=16 aligner.accumulate_grad_batches=1 aligner.max_epochs=2 \
    $t paths.artifacts=/tmp/art-$i trainer.enable_progress_bar=false >> "$OUT/log.txt" 2>&1
  echo "rc=$? wall_s=$SECONDS" | tee -a "$OUT/log.txt"
  m=$(ls /tmp/art-$i/aligner/*/metrics.json 2>/dev/null | head -1)
  [ -n "$m" ] && cp "$m" "$OUT/aligner-metrics-$i.json" && python3 -c "
import json,sys; m=json.load(open('$m')); print('$t', {k: round(v, 3) for k, v in m.items() if k.startswith(('train/', 'valid/', 'aligner/optimizer'))})"
done
grep -E "Error|error" "$OUT/log.txt" | head -20
