#!/usr/bin/env bash
# The prepared GPU check (issue 17, item 3): one call on a lent H100/H200 with CuPy and
# PyTorch installed.  In under 8 minutes it writes into OUT_DIR:
#
#   env.txt             the machine, driver, CUDA, Python packages, kernel source hash
#   pytest-gpu.txt      every test marked gpu: each kernel against the NumPy path on the
#                       device (tests/test_kernels.py; tests/test_kernels_host.py's cuda
#                       runner on grids small enough to wrap), ops and models on CuPy
#   bench-fp32.txt      python -m benchmarks.gpu: ZFNet, AlexNet, SqueezeNet forward at
#                       batch 128 against cuDNN, TF32 off; the windowed projection
#   bench-tf32.txt      the same with TF32 allowed on both sides
#   train.txt           benchmarks/train_throughput.py: a short SGD run on the device
#   memcheck.txt        compute-sanitizer memcheck over the device kernel tests (out-of-
#                       bounds and misaligned accesses, which host emulation cannot see)
#   summary.txt         one line per step: exit status, seconds, verdict
#
# Usage (from anywhere; it runs in the repository root):
#     bash benchmarks/gpu_check.sh OUT_DIR          # or with $OUT set: bash benchmarks/gpu_check.sh
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S (default 450 s for all steps).
#
# Each step has its own time limit (cut to what is left of the budget), so one hang or
# failure does not lose the others; the steps run in order of importance.  The exit
# status is 0 only when every step passed.  At most 8 files, none in subfolders, so
# that the device tool's $OUT brings them all back.
set -u -o pipefail

out=${1:-${OUT:-}}
if [ -z "$out" ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUT_DIR   (or set \$OUT)" >&2
    exit 2
fi
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2

PY=${PYTHON:-python3}
budget=${GPU_CHECK_BUDGET_S:-450}
start=$SECONDS
failures=0
summary="$out/summary.txt"
: >"$summary"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

# step NAME LIMIT_S LOG COMMAND...: run COMMAND under `timeout`, output to LOG, one summary line
step() {
    local name=$1 limit=$2 log=$3
    shift 3
    local left=$((budget - (SECONDS - start)))
    if [ "$left" -lt 20 ]; then
        printf '%-10s skipped: %ss of the %ss budget left\n' "$name" "$left" "$budget" | tee -a "$summary"
        failures=$((failures + 1))
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$SECONDS rc verdict
    printf '$ %s\n(limit %ss)\n\n' "$*" "$limit" >"$log"
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    case $rc in
        0) verdict=ok ;;
        124 | 137) verdict="TIMED OUT after ${limit}s" ;;
        *) verdict=FAILED ;;
    esac
    [ "$rc" -ne 0 ] && failures=$((failures + 1))
    printf '%-10s rc=%-3s %4ss  %-22s %s\n' "$name" "$rc" "$((SECONDS - t0))" "$verdict" "$(basename "$log")" \
        | tee -a "$summary"
}

# -- 1. environment facts (each probe limited on its own, 20-60 s: a wedged driver must not stop the run)
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)   host: $(hostname)   $(uname -srm)"
    echo "cpus: $(nproc)   load: $(cut -d' ' -f1-3 /proc/loadavg)   memory: $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB"}')"
    echo "repository: $(git rev-parse HEAD 2>/dev/null || echo 'no git here (working-tree copy)')"
    sha256sum zfnet/ops/_kernels.py benchmarks/gpu.py tests/test_kernels.py tests/test_kernels_host.py 2>&1
    echo
    echo "== nvidia-smi"
    timeout 20 nvidia-smi 2>&1
    timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,compute_mode \
        --format=csv 2>&1
    echo
    echo "== nvcc"
    timeout 20 nvcc --version 2>&1 | tail -2
    echo "== compute-sanitizer: $(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || echo 'not found')"
    echo "== C++ compiler for host emulation: $(command -v g++ c++ clang++ 2>/dev/null | head -1) $(g++ --version 2>/dev/null | head -1)"
    echo
    echo "== $PY"
    timeout 60 "$PY" - <<'EOF' 2>&1
import os, platform, sys
print("python", sys.version.split()[0], sys.executable)
def show(label, fn):
    try:
        print(f"{label}: {fn()}")
    except Exception as e:  # a broken install is a fact too
        print(f"{label}: ERROR {type(e).__name__}: {e}")
import importlib
for mod in ("numpy", "cupy", "torch", "pytest", "hypothesis"):
    show(mod, lambda mod=mod: importlib.import_module(mod).__version__)
def cupy_facts():
    import cupy
    rt, drv = cupy.cuda.runtime.runtimeGetVersion(), cupy.cuda.runtime.driverGetVersion()
    props = cupy.cuda.runtime.getDeviceProperties(0)
    return (f"runtime {rt}, driver {drv}, {props['name'].decode()}, sm_{props['major']}{props['minor']}, "
            f"{props['multiProcessorCount']} SMs, CUPY_TF32={os.environ.get('CUPY_TF32', 'unset')}")
show("cupy device", cupy_facts)
def torch_facts():
    import torch
    return (f"cuda {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}, "
            f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA DEVICE'}")
show("torch device", torch_facts)
show("zfnet sees a GPU", lambda: __import__("zfnet.backend", fromlist=["gpu_available"]).gpu_available())
EOF
} >"$out/env.txt" 2>&1
printf '%-10s %-6s %4ss  %-22s %s\n' env "" "$((SECONDS - start))" "written" env.txt | tee -a "$summary"

# -- 2. the GPU parity tests: every kernel and op on the device against NumPy
step pytest 140 "$out/pytest-gpu.txt" "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider tests

# -- 3. forward and projection against PyTorch, TF32 off
step bench-fp32 100 "$out/bench-fp32.txt" "$PY" -m benchmarks.gpu

# -- 4. a short training run on the device: the backward pass and SGD on CuPy
step train 60 "$out/train.txt" "$PY" benchmarks/train_throughput.py --device gpu --arch zfnet --batch 128 --steps 5

# -- 5. the same benchmark with TF32 allowed on both sides
step bench-tf32 70 "$out/bench-tf32.txt" "$PY" -m benchmarks.gpu --tf32

# -- 6. memcheck over the device kernel tests (small grids, poisoned outputs), with what is left
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ -x "$sanitizer" ]; then
    step memcheck "$((budget - (SECONDS - start)))" "$out/memcheck.txt" "$sanitizer" --tool memcheck --error-exitcode 3 \
        "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_kernels_host.py
else
    echo "memcheck   skipped: compute-sanitizer not found" | tee -a "$summary"
fi

# -- what the device tool's reply shows (its last lines): the tables and the summary
echo
for f in bench-fp32 bench-tf32; do
    echo "== $f"
    grep -E '^(\||GPU:|--smoke)|MISMATCH|checks failed|Error' "$out/$f.txt" 2>/dev/null | tail -12
done
echo "== train"
tail -3 "$out/train.txt" 2>/dev/null
echo "== pytest"
tail -6 "$out/pytest-gpu.txt" 2>/dev/null
echo "== memcheck"
grep -E 'ERROR SUMMARY|passed|failed' "$out/memcheck.txt" 2>/dev/null | tail -3
echo "== summary ($((SECONDS - start))s of ${budget}s; $failures step(s) not ok)"
cat "$summary"
[ "$failures" -eq 0 ]
