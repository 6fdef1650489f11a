#!/usr/bin/env bash
# GPU code-path check, run on a lent GPU machine (see benchmarks/README.md). Trains the benchmark SASRec on
# ml-100k with trainer=gpu (fp32 and bf16-mixed) and trainer=ddp, and records metrics and throughput.
# Expects: wheels of the packages the machine lacks in .whl/ (`make gpu-wheels`, DeepSpeed included), the
# ml-100k asset in .devcache/assets/ml-100k.
# Files in $OUT: gpu.txt, log.txt, metrics.jsonl (one line per run). GPU_CHECK_DEADLINE (epoch seconds,
# optional) bounds the whole check: runs get what time is left and are skipped past it.
source "$(dirname "$0")/gpu_common.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, lightning, torchmetrics; print('torch', torch.__version__, 'lightning', lightning.__version__, 'torchmetrics', torchmetrics.__version__)" | tee -a "$OUT/gpu.txt"
i=0
for t in "trainer=gpu trainer.precision=32-true" "trainer=gpu" "trainer=ddp trainer.devices=1"; do
  i=$((i+1)); b=$(budget 150)
  [ "$b" -lt 20 ] && { echo "== run $i skipped (deadline): $t" | tee -a "$OUT/log.txt"; continue; }
  echo "== run $i: $t" | tee -a "$OUT/log.txt"
  SECONDS=0
  timeout "$b" "$PY" -m recexplainer.cli experiment=bench_sasrec_ml100k $t paths.artifacts=/tmp/gc-rec-$i \
    trainer.enable_progress_bar=false num_threads=null >> "$OUT/log.txt" 2>&1
  rc=$?; echo "rc=$rc wall_s=$SECONDS" | tee -a "$OUT/log.txt"
  m=$(ls /tmp/gc-rec-$i/recommender/*/metrics.json 2>/dev/null | head -1)
  [ -n "$m" ] && "$PY" - "$m" "$t" "$rc" "$SECONDS" <<'PY' | tee -a "$OUT/metrics.jsonl"
import json, sys
m = json.load(open(sys.argv[1]))
print(json.dumps({"run": sys.argv[2], "rc": int(sys.argv[3]), "wall_s": int(sys.argv[4]), **m}))
PY
done
tail -5 "$OUT/log.txt"
