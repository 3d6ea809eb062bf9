#!/usr/bin/env bash
# The benchmark on a GPU machine that has PyTorch but no network, no Java and no TorchServe:
# how the committed GPU reports (docs/benchmarks/) were made. Wheels come in .whl/ (torchserve,
# torch-model-archiver, captum, redis, enum-compat; cp312), a Java runtime trimmed with jlink
# in .device/jre.tar.xz (see docs/benchmarks/README.md). Phases, each under a lease's call limit:
#
#   scripts/gpu_lease.sh export OUT      # ResNet-50 (random weights): TorchScript/ONNX fp32+fp16,
#                                        # AOTInductor fp16 package, INT8; parity checked
#   scripts/gpu_lease.sh model OUT       # model-only rows on the GPU (after export)
#   scripts/gpu_lease.sh tests OUT       # the GPU-marked tests
#   scripts/gpu_lease.sh e2e OUT [ARGS]  # scripts/gpu_e2e.py: ours / ours_serial / ours_graphs /
#                                        # ours_cpu / stock / noop
#   scripts/gpu_lease.sh experiment OUT  # scripts/experiment.py on GPU workers
#   scripts/gpu_lease.sh e2e-legacy OUT  # the 2026-11-23 end-to-end rows (benchmark.py)
#   scripts/gpu_lease.sh issue13 OUT     # one call: export, end to end, model rows, in order of
#                                        # importance, each step bounded so the call ends in time
#   scripts/gpu_lease.sh ort-gpu OUT     # ONNX Runtime's CUDA provider: model rows and GPU tests,
#                                        # with onnxruntime-gpu carried in parts (see below)
#
# MPS=1 before a phase runs it under NVIDIA's Multi-Process Service (when the machine has
# nvidia-cuda-mps-control), so the workers' kernels share the GPU instead of taking turns.
# onnxruntime-gpu (~250 MB, cp312) is too big for one transfer: split it with
#   split -b 50M onnxruntime_gpu-*.whl .device/ort-gpu.whl.part-
#   sha256sum onnxruntime_gpu-*.whl | cut -d' ' -f1 > .device/ort-gpu.whl.sha256
# and carry one part per call while the machine stays warm; this phase joins them.
set -euo pipefail
usage="usage: gpu_lease.sh export|model|tests|e2e|experiment|e2e-legacy|issue13|ort-gpu OUT [ARGS]"
phase=${1:?$usage}
out=${2:?$usage}
shift 2
work=results/gpu
mkdir -p "$out" "$work"
if ! python3 -c "import ts, model_archiver, captum, redis" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
fi
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if [ -f .device/jre.tar.xz ] && [ ! -x /tmp/jre/bin/java ]; then
    mkdir -p /tmp/jre && tar -C /tmp/jre --strip-components=1 -xJf .device/jre.tar.xz
fi
if [ -x /tmp/jre/bin/java ]; then
    export JAVA_HOME=/tmp/jre PATH=/tmp/jre/bin:$PATH
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
if [ "${MPS:-0}" = 1 ]; then
    if command -v nvidia-cuda-mps-control >/dev/null; then
        # the workers inherit these from TorchServe, which inherits them from here
        export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps/log
        mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
        nvidia-cuda-mps-control -d && echo "MPS: on"
        trap 'echo quit | nvidia-cuda-mps-control || true' EXIT
    else
        echo "MPS: off (no nvidia-cuda-mps-control on this machine)"
    fi
fi
export_r50() {
    [ -f "$work/r50_export/model_meta.json" ] && return 0
    # random weights: serving cost depends on the architecture, not on the values
    python3 -c "import torch, torchvision; torch.manual_seed(0); \
torch.save(torchvision.models.resnet50(num_classes=5).state_dict(), '$work/r50.pth')"
    local args=(--checkpoint "$work/r50.pth" --arch resnet50 --class-names a,b,c,d,e
        --name resnet50 --out "$work/r50_export" --fp16)
    # torch 2.11 on the 2026-11-25 lease segfaulted loading the ResNet-50 package: go on without
    python3 -m export "${args[@]}" --aot || python3 -m export "${args[@]}"
    cp "$work/r50_export/parity.json" "$out/parity_r50.json"
}
case $phase in
export)
    export_r50
    ;;
model)
    export_r50
    python3 scripts/benchmark.py --out "$work" --skip e2e,preprocess --devices cuda \
        --export-dir "$work/r50_export" --cell-seconds 1 "$@"
    ;;
e2e)
    export_r50
    python3 scripts/gpu_e2e.py --export-dir "$work/r50_export" --checkpoint "$work/r50.pth" \
        --out "$out" "$@"
    ;;
e2e-legacy)
    python3 scripts/benchmark.py --out "$work" --skip model,preprocess \
        --reuse "$work/results.json" --served-backend torchscript --workers 4 \
        --batch-size 32 --max-batch-delay 5 --concurrency 1,8,32,128,256 --e2e-seconds 8
    ;;
experiment)
    export_r50
    python3 scripts/experiment.py --export-dir "$work/r50_export" --out "$out" --gpu \
        --workers 1,2,4,8 --concurrency 1,16,64,256 --batch-sizes 1,8,32 \
        --delays 0,5,20 --seconds 6
    ;;
issue13)
    export_r50 2>&1 | tail -25
    backend=torchscript
    grep -q '"aoti/fp16"' "$work/r50_export/model_meta.json" && backend=aoti
    # ours_cpu (Pillow decoding) was measured on 2026-11-25; its time goes to the new rows
    timeout 360 python3 scripts/gpu_e2e.py --export-dir "$work/r50_export" \
        --checkpoint "$work/r50.pth" --out "$out" --backend "$backend" \
        --handlers noop,ours,ours_serial,ours_graphs,stock \
        --concurrency 64,256 --seconds 6 --processes 6 "$@" || echo "e2e stopped: $?"
    tail -c 4000000 "$out/work/run/logs/model_log.log" > "$out/model_log.txt" || true
    rm -rf "$out/work"
    timeout 120 python3 scripts/benchmark.py --out "$work" --skip e2e,preprocess \
        --devices cuda --export-dir "$work/r50_export" --cell-seconds 0.5 \
        --rows aotinductor,torchscript | tail -30 || echo "model rows stopped: $?"
    cp "$work/results.json" "$work/results.md" "$out"/ || true
    exit 0  # at most 8 files come back from a lease: no plots of the model rows
    ;;
ort-gpu)
    parts=(.device/ort-gpu.whl.part-*)
    [ -f "${parts[0]}" ] || { echo "no .device/ort-gpu.whl.part-* carried"; exit 2; }
    if [ ! -d /tmp/ort-gpu/onnxruntime ]; then
        cat "${parts[@]}" > /tmp/ort-gpu.whl
        if [ -f .device/ort-gpu.whl.sha256 ]; then  # a part missing or cut short: say so
            echo "$(cat .device/ort-gpu.whl.sha256)  /tmp/ort-gpu.whl" | sha256sum -c -
        fi
        # a wheel is a zip: unpacked as it is (pip would judge the file name, not the wheel)
        python3 -m zipfile -e /tmp/ort-gpu.whl /tmp/ort-gpu
    fi
    export PYTHONPATH=/tmp/ort-gpu:$PYTHONPATH
    # get_available_providers() lists CUDA even when its libraries cannot load: the model
    # rows below say "unavailable" then (the backend falls back to the CPU and is refused)
    python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
    export_r50
    timeout 240 python3 scripts/benchmark.py --out "$work" --skip e2e,preprocess \
        --devices cuda --export-dir "$work/r50_export" --cell-seconds 0.5 \
        --rows onnxruntime,torchscript | tail -30 || echo "model rows stopped: $?"
    python3 -m pytest -q -m gpu -p no:cacheprovider -p no:randomly tests -k onnx 2>&1 \
        | tee "$out/gpu_tests_ort.log" || echo "ONNX GPU tests failed: $?"
    ;;
tests)
    python3 -m pytest -q -m gpu -p no:cacheprovider -p no:randomly tests "$@" 2>&1 \
        | tee "$out/gpu_tests.log" || echo "GPU tests failed: $?"
    ;;
esac
cp "$work"/results.* "$work"/*.png "$out"/ 2>/dev/null || true
