#!/usr/bin/env bash
# The benchmark on a GPU machine that has PyTorch but no network, no Java and no TorchServe:
# how the committed GPU report (docs/benchmarks/) was made. Wheels come in .whl/ (torchserve,
# torch-model-archiver, captum, redis, enum-compat; cp312), a trimmed Java runtime in .device/jre
# (jlink, see docs/benchmarks/README.md). Two phases, so each stays under a lease's call limit:
#
#   scripts/gpu_lease.sh model  OUT   # export ResNet-50, model-only rows (CPU + GPU), preprocessing
#   scripts/gpu_lease.sh e2e    OUT   # end to end through TorchServe on the GPU, reusing phase 1
#   scripts/gpu_lease.sh tests  OUT   # the GPU-marked tests
#   scripts/gpu_lease.sh export OUT   # a ResNet-50 export (random weights) for the experiment
#   scripts/gpu_lease.sh experiment OUT  # scripts/experiment.py on GPU workers
set -euo pipefail
usage="usage: gpu_lease.sh model|e2e|tests|export|experiment OUT"
phase=${1:?$usage}
out=${2:?$usage}
work=results/gpu
mkdir -p "$out" "$work"
if ! python3 -c "import ts, model_archiver, captum, redis" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
fi
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if [ -x .device/jre/bin/java ]; then
    export JAVA_HOME=$PWD/.device/jre PATH=$PWD/.device/jre/bin:$PATH
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
case $phase in
model)
    python3 scripts/benchmark.py --out "$work" --skip e2e --cell-seconds 1
    cp "$work/results.json" "$out/results_model.json"
    ;;
e2e)
    python3 scripts/benchmark.py --out "$work" --skip model preprocess \
        --reuse "$work/results.json" --served-backend torchscript --workers 4 \
        --batch-size 32 --max-batch-delay 5 --concurrency 1,8,32,128,256 --e2e-seconds 8
    ;;
export)
    # random weights: serving cost depends on the architecture, not on the values
    python3 -c "import torch, torchvision; torch.manual_seed(0); \
torch.save(torchvision.models.resnet50(num_classes=5).state_dict(), '$work/r50.pth')"
    python3 -m export --checkpoint "$work/r50.pth" --arch resnet50 --class-names a,b,c,d,e \
        --name resnet50 --out "$work/r50_export" --fp16
    ;;
experiment)
    python3 scripts/experiment.py --export-dir "$work/r50_export" --out "$out" --gpu \
        --workers 1,2,4,8 --concurrency 1,16,64,256 --batch-sizes 1,8,32 \
        --delays 0,5,20 --seconds 6
    ;;
tests)
    python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests.log"
    ;;
esac
cp "$work"/results.* "$work"/*.png "$out"/ 2>/dev/null || true
