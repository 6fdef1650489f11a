#!/usr/bin/env bash
# GPU code-path check, run on a lent GPU machine (see benchmarks/README.md). Trains the benchmark SASRec on
# ml-100k with trainer=gpu (fp32 and bf16-mixed) and trainer=ddp, and records metrics and throughput.
# Expects: wheels of missing pure-Python packages in .whl/, the ml-100k asset in .devcache/assets/ml-100k.
set -uo pipefail
PY=${PY:-python3}   # make gpu-check passes the venv python
OUT=${OUT:-/tmp/gpu-check-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
[ -d .devcache ] && export RECEXPLAINER_CACHE=${RECEXPLAINER_CACHE:-$PWD/.devcache}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, lightning, torchmetrics; print('torch', torch.__version__, 'lightning', lightning.__version__, 'torchmetrics', torchmetrics.__version__)" | tee -a "$OUT/gpu.txt"
i=0
for t in "trainer=gpu trainer.precision=32-true" "trainer=gpu" "trainer=ddp trainer.devices=1"; do
  i=$((i+1))
  echo "== run $i: $t" | tee -a "$OUT/log.txt"
  SECONDS=0
  timeout 240 "$PY" -m recexplainer.cli experiment=bench_sasrec_ml100k $t paths.artifacts=/tmp/art-$i \
    trainer.enable_progress_bar=false num_threads=null >> "$OUT/log.txt" 2>&1
  echo "rc=$? wall_s=$SECONDS" | tee -a "$OUT/log.txt"
  m=$(ls /tmp/art-$i/recommender/*/metrics.json 2>/dev/null | head -1)
  [ -n "$m" ] && cp "$m" "$OUT/metrics-$i.json" && "$PY" - "$m" "$t" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
keys = ["test/hr@10", "test/ndcg@10", "train/sec_per_epoch_median", "train/sec_to_best_epoch", "train/best_epoch", "train/epochs_run"]
print(sys.argv[2], {k: round(m[k], 4) for k in keys if k in m})
PY
done
tail -5 "$OUT/log.txt"
