#!/usr/bin/env bash
# The cifar10_airbench grid (issue 30, section 4) on a lent GPU, with the data and the augmentation on the GPU
# (the protocol's --data-on-device). The project never needs this: the CPU grid stands on its own.
#
# What limits it: a device call carries at most 64 MiB (the tracked tree is about 7.3 MiB), and the protocol's
# data is 76 MiB. So the data goes over in two parts, and the grid runs in the second call, on the same warm
# machine (it is given back 30 s after a call: run the two calls back to back):
#   part1: cifar10/train.parquet (45.4 MiB)
#   part2: cifar10/test, tinyimagenet32/val (the near view's rows), mnist / fashion_mnist / notmnist test (30.7 MiB)
#   wheels: datasets, dill, multiprocess, timm (3.6 MiB; the device image has torch, pyarrow, safetensors,
#           huggingface_hub, but not datasets)
#
# Here (once, with ../shared/data beside the checkout and PyPI reachable):
#   bash scripts/device_airbench.sh prepare
# Device call 1 (carry [".device/part1"], timeout_s 120):
#   bash scripts/device_airbench.sh stage part1
# Device call 2 (carry [".device/part2", ".device/wheels"], timeout_s 600), at once after call 1:
#   bash scripts/device_airbench.sh stage part2 && bash scripts/device_airbench.sh grid
# Then here, from the files that came back (FILES: the call's files_at):
#   mkdir -p benchmarks/results/gpu_h100 && cp -r FILES/cifar10_airbench benchmarks/results/gpu_h100/
#   timm-isomax benchmark --report-only --output benchmarks/results/gpu_h100
#
# The grid stops itself (SIGTERM: the runs checkpoint) GRID_SECONDS (default 500) after it starts, so that its
# finished seeds come back inside the call's limit; a third call with the same command, on the still-warm machine,
# continues it (the runs and results live in DEVICE_WORK, /tmp/device_airbench there; $OUT is emptied before each call).
# GRID_ARGS adds benchmark options (e.g. "--seeds 0"); DEVICE (default cuda) and PYTHON (default python3) are for
# trying the script on the CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PROTOCOL=cifar10_airbench
CARRY=.device
DATA=../shared/data  # where the protocols and views look for the data (beside the checkout)
PYTHON=${PYTHON:-python3}

copy_split() {  # copy_split PART NAME SPLIT: one split's Parquet file into the carried part
    mkdir -p "$CARRY/$1/$2"
    cp "$DATA/$2/$3.parquet" "$CARRY/$1/$2/"
}

case "${1:-}" in
prepare)
    if [ ! -f "$DATA/cifar10/train.parquet" ]; then
        echo "prepare: $DATA/cifar10/train.parquet not found; run it in a checkout with ../shared/data beside it." >&2
        exit 1
    fi
    rm -rf "$CARRY" && mkdir -p "$CARRY/wheels"
    copy_split part1 cifar10 train
    copy_split part2 cifar10 test
    copy_split part2 tinyimagenet32 val
    for name in mnist fashion_mnist notmnist; do copy_split part2 "$name" test; done
    # the device's Python is 3.12; the versions are those of the project's venv (constraints.txt's where it pins them)
    version() { bash scripts/in_venv.sh python -c "import importlib.metadata as m; print(m.version('$1'))"; }
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d "$CARRY/wheels" \
        "datasets==$(version datasets)" "timm==$(version timm)" "dill==$(version dill)" \
        "multiprocess==$(version multiprocess)"
    du -sh "$CARRY"/* >&2
    ;;
stage)
    part="${2:?stage needs part1 or part2}"
    if [ ! -d "$CARRY/$part" ]; then
        echo "stage: $CARRY/$part did not travel; name it in the call's carry (after 'prepare' here)." >&2
        exit 1
    fi
    mkdir -p "$DATA" && cp -r "$CARRY/$part"/. "$DATA/"
    find "$DATA" -name "*.parquet" | sort
    ;;
grid)
    if [ ! -f "$DATA/cifar10/train.parquet" ]; then
        echo "grid: part1 is not on this machine ($DATA/cifar10/train.parquet): the machine was given back since" \
             "call 1; run 'stage part1' again, then this call." >&2
        exit 1
    fi
    if [ -d "$CARRY/wheels" ] && ls "$CARRY"/wheels/*.whl > /dev/null 2>&1; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$CARRY"/wheels/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    out="${OUT:-/tmp/device_out}"
    work="${DEVICE_WORK:-/tmp/device_airbench}"  # runs, results and decoded images, kept while the machine is warm
    results="$work/results"
    mkdir -p "$out" "$results"
    # the finished seeds come back whatever happens below
    keep() {
        for folder in "$results"/*/; do  # the protocol's folder (cifar10_airbench-smoke with --smoke)
            ls "$folder"seed*.json > /dev/null 2>&1 || continue
            mkdir -p "$out/$(basename "$folder")" && cp "$folder"seed*.json "$out/$(basename "$folder")/"
        done
    }
    trap keep EXIT
    nvidia-smi -L 2>/dev/null || true
    # shellcheck disable=SC2086
    timeout -s TERM -k 60 "${GRID_SECONDS:-500}" "$PYTHON" -m timm_isomax benchmark "$PROTOCOL" \
        --device "${DEVICE:-cuda}" --output "$results" --runs "$work/runs" \
        --feature-cache "$work/cache" ${GRID_ARGS:-} 2>&1 | tee -a "$out/grid.log" || true
    ;;
*)
    echo "usage: bash scripts/device_airbench.sh prepare | stage part1 | stage part2 | grid (see its first lines)" >&2
    exit 2
    ;;
esac
