# Prepare a lent GPU machine (no network) for the GPU benchmarks; `source` it from the project
# root with .device-site/ (../shared/tools/device-site) and .device-assets/ carried along:
#
#   source bench/gpu_setup.sh && python3 bench/trial_gpu.py --out $OUT/trial.json
#
# .device-assets/assets.tar.xz holds the offline `mmlu` asset (assets/mmlu, with its manifest)
# and SmolLM2's tokenizer files (smollm2-tokenizer/); see bench/README.md for how it is packed.
# The model: the Llama-3-8B shape
# with random bf16 weights and SmolLM2's tokenizer, written to /tmp/llama3-8b (about 30 s).
set -e
if [ ! -d /tmp/site/ray ]; then
  mkdir -p /tmp/site && tar -xJf .device-site/site.tar.xz -C /tmp/site
  # Byte-compile as an installer would: the packed site and the machine's own packages come
  # without .pyc files, and every trial process would compile them again (seconds each).
  python3 -m compileall -q -j 0 /tmp/site "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    > /dev/null 2>&1 || true
fi
if ls .device-assets/liger_kernel-*.whl > /dev/null 2>&1 && [ ! -d /tmp/site/liger_kernel ]; then  # optional: train.kernels
  python3 -m zipfile -e .device-assets/liger_kernel-*.whl /tmp/site
fi
if [ -f .device-assets/py-spy.xz ] && [ ! -x /tmp/site/bin/py-spy ]; then   # optional profiler
  mkdir -p /tmp/site/bin && xz -dc .device-assets/py-spy.xz > /tmp/site/bin/py-spy && chmod +x /tmp/site/bin/py-spy
fi
# qsweep from this checkout, laid out as its wheel installs it (qsweep.trainers -> trainers/, ...)
mkdir -p .qsweep-view/qsweep
for folder in trainers evaluation orchestrator configs sweeps; do ln -sfn "$PWD/$folder" ".qsweep-view/qsweep/$folder"; done
export PYTHONPATH=/tmp/site:$PWD/.qsweep-view PATH=/tmp/site/bin:$PATH
export QSWEEP_CACHE_DIR=/tmp/qsweep-cache PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
if [ ! -d "$QSWEEP_CACHE_DIR/assets/mmlu" ]; then
  mkdir -p "$QSWEEP_CACHE_DIR" && tar -xJf .device-assets/assets.tar.xz -C "$QSWEEP_CACHE_DIR"
fi
if [ ! -f /tmp/llama3-8b/config.json ]; then
  python3 -m qsweep.trainers.random_model --shape llama3-8b --dtype bf16 --vocab-size 128256 --device cuda \
    --tokenizer-from "$QSWEEP_CACHE_DIR/smollm2-tokenizer" /tmp/llama3-8b > /dev/null
fi
set +e
