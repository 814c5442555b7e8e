#!/usr/bin/env bash
# The whole toolchain on a CUDA device: synth -> run (Light-FMP) and run --no-select side by side -> export ->
# profile. Complements gpu_check.sh (kernels only). Run from anywhere inside the repo:
#   bash benchmarks/gpu_pipeline.sh [ROWS]        (default 200000; writes under $OUT or ./out)
# Each step is capped; the whole script stays under ~4 minutes on one GPU. Needs lightfmp's CLI importable (its
# dependencies installed; gpu_check.sh installs lightfmp itself with --no-deps).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
ROWS="${1:-200000}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
log() { echo "[gpu_pipeline $(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu_pipeline.log"; }
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import lightfmp.cli.app" 2>/dev/null; then
    # gpu_check.sh installs lightfmp without dependencies; a GPU image may lack the serving ones (starlette,
    # uvicorn): bring them as wheels and put them on PYTHONPATH first.
    log "lightfmp's CLI does not import with $PY: $("$PY" -c "import lightfmp.cli.app" 2>&1 | tail -n 1)"
    exit 2
fi
WORK="$(mktemp -d)"
log "rows=$ROWS work=$WORK"
timeout 60 "$PY" -m lightfmp data synth --rows "$ROWS" --seed 0 --out "$WORK/syn" 2>&1 | tee -a "$OUT/gpu_pipeline.log"
rc=0
for mode in select no-select; do
    flag=""; [ "$mode" = no-select ] && flag="--no-select"
    log "run $mode --device ${DEVICE:-cuda}"
    timeout 100 "$PY" -m lightfmp run --data "$WORK/syn/data.parquet" --label label --device ${DEVICE:-cuda} \
        --out "$WORK/$mode" $flag 2>&1 | tee -a "$OUT/gpu_pipeline.log" || rc=$?
    [ -f "$WORK/$mode/metrics.json" ] && cat "$WORK/$mode/metrics.json" >>"$OUT/gpu_pipeline.log"
done
log "export + profile"
timeout 60 "$PY" -m lightfmp export "$WORK/select" --out "$WORK/export" 2>&1 | tee -a "$OUT/gpu_pipeline.log" || rc=$?
timeout 60 "$PY" -m lightfmp profile "$WORK/export" 2>&1 | tee -a "$OUT/gpu_pipeline.log" || rc=$?
log "rc=$rc"
rm -rf "$WORK"
exit $rc
