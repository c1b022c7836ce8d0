#!/usr/bin/env bash
# The GPU measurements this project still owes (docs/perf.md "GPU", docs/scale-out.md "How fast"), in two steps that
# each fit one 10-minute call on a lent GPU machine. Run from the repository root:
#
#   scripts/gpu-checks.sh perf       # bench perf and bench perf --compile at the reference size (384 px, batch 32)
#   scripts/gpu-checks.sh grids      # the default grid on the GPU, then again with two workers sharing it
#   scripts/gpu-checks.sh reference  # 2 epochs of the reference experiment's UNet on a LandCover.ai-sized stand-in
#
# Everything is written under $OUT (default /tmp/gpu-checks): the JSON records, the logs, the device's description.
# A machine whose Python lacks some of this project's dependencies can be given them as wheels in .whl/ (see
# docs/perf.md); they are installed into /tmp/site first. EXTRA_PERF_ARGS adds options to both bench perf runs (a
# smaller --size or --steps to try the script on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-checks}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

describe() {
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
}

histories() {  # every stored cell's per-epoch history (train and eval seconds, mIoU), as JSON
    "$python" -c "import json, sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute('SELECT label, history FROM cells')
print(json.dumps({label: json.loads(history) for label, history in rows}, indent=1))" "$1"
}

case "${1:-}" in
perf)
    describe | tee "$out/device.txt"
    # shellcheck disable=SC2086  # EXTRA_PERF_ARGS is a list of options
    "$python" -m bench perf --json "$out/perf.json" ${EXTRA_PERF_ARGS:-} 2>&1 | tee "$out/perf.log"
    "$python" -m bench perf --compile --json "$out/perf-compile.json" ${EXTRA_PERF_ARGS:-} 2>&1 \
        | tee "$out/perf-compile.log"
    ;;
grids)
    describe | tee "$out/device.txt"
    # One worker on the GPU (the device-resident path, bf16, fused Adam), then two workers sharing it.
    for devices in 0 0,0; do
        started=$SECONDS
        "$python" -m bench run --grid default --devices "$devices" --out "/tmp/gpu-runs-$devices" \
            --leaderboard "$out/leaderboard-$devices.md" 2>&1 | tee "$out/grid-$devices.log"
        echo "--devices $devices: $((SECONDS - started)) s" | tee -a "$out/device.txt"
    done
    histories /tmp/gpu-runs-0/results.sqlite > "$out/grid-0.json"
    ;;
reference)
    describe | tee "$out/device.txt"
    # The seed grid's recipe and UNet on the built-in generator's tiles at LandCover.ai's size (7470 training and 1602
    # validation tiles of 384 px, generated in a few minutes): its time per epoch against the reference's 90 s on an
    # A100. Two epochs, so that the first (cuDNN autotuning) is not the only one.
    "$python" -m bench run --grid seed \
        --set 'dataset={ name = "synthetic", tile_size = 384, train_size = 7470, val_size = 1602, test_size = 0 }' \
        --set 'axes.archs=[{ name = "unet", label = "UNet", base_channels = 64, upsampling = "bilinear" }]' \
        --set 'axes.fractions=[0.1]' --set recipe.epochs=2 --out /tmp/gpu-runs-reference \
        --leaderboard "$out/leaderboard-reference.md" 2>&1 | tee "$out/reference.log"
    histories /tmp/gpu-runs-reference/results.sqlite > "$out/reference.json"
    ;;
*)
    echo "usage: scripts/gpu-checks.sh perf|grids|reference" >&2
    exit 2
    ;;
esac
