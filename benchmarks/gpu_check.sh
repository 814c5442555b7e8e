#!/usr/bin/env bash
# One command for a CUDA machine: compiled-kernel tests (no interpreter) + the kernel benchmark.
# Run from anywhere inside the repo:  bash benchmarks/gpu_check.sh
# Writes logs, tables and JSON under $OUT (or ./out).  Hard caps 200 + 110 + 40 s (< 6 min) after
# setup; the benchmark rewrites its JSON after every block, so a cut-short run still leaves data.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu_check.log"; }

log "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo 'nvidia-smi failed')"
# First interpreter whose torch sees a GPU: $PYTHON, a repo venv, then the system one.
PY=""
for cand in ${PYTHON:-} .venv/bin/python python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
        PY="$cand"; break
    fi
done

[ -n "$PY" ] || { log "no python with CUDA-enabled torch found"; exit 2; }
log "python: $PY"
# The GPU box brings its own torch + triton: install the package only if it is not importable, and
# without dependencies so that torch is never replaced.
if ! "$PY" -c "import lightfmp.kernels" 2>/dev/null; then
    log "lightfmp not importable: pip install -e . --no-deps"
    "$PY" -m pip install -q -e . --no-deps --no-build-isolation 2>&1 | tail -n 3 | tee -a "$OUT/gpu_check.log"
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT/gpu_check.log"
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
assert torch.cuda.is_available(), "no CUDA device visible"
EOF

# Tests: compiled kernels on CUDA tensors (conftest.py leaves TRITON_INTERPRET unset in this mode).
unset TRITON_INTERPRET
log "tests"
test_rc=0
LIGHTFMP_GPU_TESTS=1 timeout 200 "$PY" -m pytest tests/test_kernels*.py -q -p no:cacheprovider \
    --junitxml="$OUT/kernels_tests.xml" 2>&1 | tee "$OUT/kernels_tests.log" || test_rc=$?
log "tests rc=$test_rc"

# Benchmark: fp32 full sweep, then a bf16 sweep at the largest batch.
log "benchmark fp32"
bench_rc=0
timeout 110 "$PY" benchmarks/kernels.py --device cuda --json "$OUT/kernels_cuda_fp32.json" 2>&1 \
    | tee "$OUT/kernels_cuda_fp32.txt" || bench_rc=$?
log "benchmark bf16"
timeout 40 "$PY" benchmarks/kernels.py --device cuda --dtype bf16 --batch 65536 \
    --json "$OUT/kernels_cuda_bf16.json" 2>&1 | tee "$OUT/kernels_cuda_bf16.txt" || bench_rc=$?
log "benchmark rc=$bench_rc; outputs in $OUT"
exit $(( test_rc != 0 ? test_rc : bench_rc ))
