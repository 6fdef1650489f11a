# Shared set-up of the GPU check scripts (sourced, not run): PY, OUT, the GPU_CHECK_DEADLINE budget, the
# pure-Python wheels of .whl/ (packages the lent machine lacks), the offline asset cache of .devcache/.
set -uo pipefail
PY=${PY:-python3}   # make gpu-check passes the venv python
OUT=${OUT:-/tmp/gpu-check-out}; mkdir -p "$OUT"
DEADLINE=${GPU_CHECK_DEADLINE:-$(( $(date +%s) + 3600 ))}
# budget N: N seconds, or what is left before the deadline (minus 10 s) when that is less
budget() { local left=$(( DEADLINE - $(date +%s) - 10 )); [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
[ -d .devcache ] && export RECEXPLAINER_CACHE=${RECEXPLAINER_CACHE:-$PWD/.devcache}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
