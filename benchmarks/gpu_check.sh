#!/usr/bin/env bash
# GPU readiness check (`bash benchmarks/gpu_check.sh` from the repository root): install what is
# missing, run the `cuda`-marked tests and short GPU benchmarks, and write everything to
# benchmarks/results/gpu/ (and to $OUT when set: the device runner returns the files it finds there).
# Stages, each with its own time limit (a failing one is recorded and the script goes on; all
# under ~8 minutes): 1. nvidia-smi (no GPU: say so, write the summary, exit 0); 2. pip install of
# what is missing (torch CUDA build, cupy-cuda12x, test deps; jax[cuda12] if GPU_CHECK_JAX=1);
# 3. pytest -m cuda; 4. W1/W3 quick points on CuPy and torch-CUDA against the GPU peers; W8 on
# torch-CUDA against jet-for-pytorch and torch.func; 5. the W6 training step on torch-CUDA (CuPy
# has no autograd); 6. the summary, benchmarks/results/gpu/summary.txt.
# Environment: PYTHON (default: python3), GPU_CHECK_JAX=1 to pip install jax[cuda12],
# GPU_CHECK_NO_INSTALL=1 to install nothing, GPU_CHECK_BUDGET_S (default 460) for the
# total time of the stages, GPU_CHECK_RESULTS for another results folder.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
RES="${GPU_CHECK_RESULTS:-$ROOT/benchmarks/results/gpu}"
mkdir -p "$RES"
LOG="$RES/gpu_check.log"
: >"$LOG"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
# every stage ends by this deadline (7 min 40 s after the start), whatever its own limit
DEADLINE=$((START + ${GPU_CHECK_BUDGET_S:-460}))
declare -a SUMMARY=()

log() { printf '%s\n' "$*" | tee -a "$LOG"; }

# stage NAME LIMIT_S CMD...: run CMD under `timeout`, log its output, record the outcome
stage() {
    local name="$1" limit="$2"
    shift 2
    local t0 rc left
    t0=$(date +%s)
    left=$((DEADLINE - t0))
    if [ "$left" -lt 15 ]; then
        log "=== $name: skipped, the check's time is used up"
        SUMMARY+=("SKIPPED  $name (out of time)")
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    log ""
    log "=== $name (limit ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    local took=$(($(date +%s) - t0))
    if [ "$rc" -eq 0 ]; then
        SUMMARY+=("ok       $name (${took} s)")
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        SUMMARY+=("TIMEOUT  $name (limit ${limit} s)")
    else
        SUMMARY+=("FAILED   $name (exit $rc, ${took} s)")
    fi
    return 0
}

finish() {
    {
        echo "GPU check, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(($(date +%s) - START)) s in all"
        echo "repository: $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
        for line in "${SUMMARY[@]}"; do echo "$line"; done
    } >"$RES/summary.txt"
    log ""
    log "=== summary"
    tee -a "$LOG" <"$RES/summary.txt"
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT/gpu" && cp -r "$RES/." "$OUT/gpu/" && log "copied to $OUT/gpu"
    fi
}

# --- 1. is there a GPU?
log "hessquik-core GPU check in $ROOT"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! timeout 30 nvidia-smi >"$RES/nvidia-smi.txt" 2>&1; then
    log "no NVIDIA GPU found (nvidia-smi missing or failing): nothing to check on this machine."
    SUMMARY+=("skipped  everything: no NVIDIA GPU on this machine")
    rm -f "$RES/nvidia-smi.txt"
    finish
    exit 0
fi
tee -a "$LOG" <"$RES/nvidia-smi.txt"
SUMMARY+=("ok       nvidia-smi: $(timeout 20 nvidia-smi -L 2>/dev/null | head -n 1)")
if ! command -v "$PY" >/dev/null 2>&1; then
    log "no Python interpreter '$PY' (set PYTHON=...)"
    SUMMARY+=("FAILED   python: '$PY' not found")
    finish
    exit 1
fi

have() { "$PY" -c "import $1" >/dev/null 2>&1; }
cuda_torch() { "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; }

# --- 2. install what is missing (PyPI's torch wheel for Linux x86_64 is a CUDA build)
if [ -z "${GPU_CHECK_NO_INSTALL:-}" ]; then
    pkgs=()
    for spec in "numpy:numpy" "array_api_compat:array-api-compat" "pytest:pytest" "hypothesis:hypothesis" \
        "array_api_strict:array-api-strict" "scipy:scipy" "safetensors:safetensors" "tqdm:tqdm" \
        "matplotlib:matplotlib" "hessQuik:hessquik==0.0.6" "cupy:cupy-cuda12x"; do
        have "${spec%%:*}" || pkgs+=("${spec#*:}")
    done
    cuda_torch || pkgs+=("torch")
    if [ -n "${GPU_CHECK_JAX:-}" ]; then
        "$PY" -c "import jax, sys; sys.exit(0 if any(d.platform == 'gpu' for d in jax.devices()) else 1)" \
            >/dev/null 2>&1 || pkgs+=("jax[cuda12]" "folx")
    fi
    if [ ${#pkgs[@]} -gt 0 ]; then
        stage "install ${pkgs[*]}" 150 "$PY" -m pip install --quiet "${pkgs[@]}"
    else
        SUMMARY+=("ok       install: nothing missing")
    fi
fi
stage "versions" 30 "$PY" - <<'EOF'
import importlib
for mod in ("numpy", "torch", "cupy", "jax", "folx", "hessQuik"):
    try:
        m = importlib.import_module(mod)
        extra = {
            "torch": lambda: f" cuda={m.version.cuda} available={m.cuda.is_available()}",
            "cupy": lambda: f" devices={m.cuda.runtime.getDeviceCount()}",
            "jax": lambda: f" devices={m.devices()}",
        }.get(mod, lambda: "")()
        print(f"{mod} {getattr(m, '__version__', '?')}{extra}")
    except Exception as e:  # noqa: BLE001 - a report, not a failure
        print(f"{mod}: not usable ({type(e).__name__}: {e})")
EOF

# --- 3. the cuda-marked tests
stage "pytest -m cuda" 120 "$PY" -m pytest -q -p no:cacheprovider -m cuda -rs \
    --junitxml="$RES/pytest-cuda.xml" tests

# --- 4. evaluation benchmark: W1 and W3 quick points on the GPU peers
GPU_PEERS="ours-cupy,ours-torch-cuda,torch.func-cuda,hessQuik-0.0.6-cuda,jax-cuda,folx-cuda"
stage "benchmark W1,W3 (GPU peers)" 90 "$PY" -m benchmarks --quick --workloads W1,W3 \
    --peers "$GPU_PEERS" --out "$RES/eval" --no-progress --single-pass

# --- W8 (benchmarks/w8.py), quick grid. jet needs Python >= 3.12: installed when $PY is new enough
# (unless GPU_CHECK_NO_INSTALL) or taken from $HQ_JET_PYTHON; without it the jet peer is reported
# unavailable with the reason and the other peers still run.
if [ -z "${GPU_CHECK_NO_INSTALL:-}" ] && ! have jet \
    && "$PY" -c "import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)" >/dev/null 2>&1; then
    stage "install jet-for-pytorch (W8)" 60 "$PY" -m pip install --quiet "jet-for-pytorch>=1.0"
fi
# what is left after keeping W6's 100 s, at most 120 s
W8_LIMIT=$((DEADLINE - $(date +%s) - 100))
[ "$W8_LIMIT" -gt 120 ] && W8_LIMIT=120
[ "$W8_LIMIT" -lt 20 ] && W8_LIMIT=20
stage "benchmark W8 (torch-CUDA, jet, nested AD)" "$W8_LIMIT" "$PY" -m benchmarks.w8 --quick --device cuda \
    --dtypes float32,float64 --repeat 5 --max-call-s 5 --skip-s 20 --jet-timeout-s 60 --out "$RES/w8"

# --- 5. W6 training step on torch-CUDA
stage "benchmark W6 (torch-CUDA)" 100 "$PY" -m benchmarks.training_step --device cuda \
    --d 2,16,256 --widths 64 --dtypes float32 --n 1024 --repeat 5 --compile-d "" \
    --peers ours-auto,ours-fwd,ours-bwd,torch.func,jax,jax+folx,hessQuik-0.0.6 \
    --max-call-s 5 --out "$RES" --prefix w6_cuda

finish
exit 0
