#!/usr/bin/env bash
# Everything that needs a GPU, in one call: a CUDA build for Hopper, the GPU
# tests, compute-sanitizer over them (memcheck, racecheck, synccheck,
# initcheck), the torch-free CUDA microbenchmarks (bench_cuda_*) and every
# Python benchmark on the GPU. Results
# (JSON, markdown, PNG, logs) are packed into $OUT/gpu_results.tar.gz (OUT
# defaults to ./gpu_out): one file, as the device tool brings back few.
#   bash benchmarks/gpu_run.sh                 # every stage, on an H100/H200 with torch and nvcc
#   bash benchmarks/gpu_run.sh build test      # only these stages (in this order), e.g. to fit
#                                              # a 10-minute call: build test sanitize cuda_bench bench smoke
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
RESULTS="$OUT/gpu_results"
mkdir -p "$RESULTS"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, remember a failure, go on
  local name=$1; shift
  echo "=== $name: $*"
  "$@" > "$RESULTS/$name.log" 2>&1 || { status=1; echo "--- $name FAILED (exit $?)"; }
  tail -n 15 "$RESULTS/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RESULTS/gpu.txt" 2>&1

stage_build() {
  step build python3 setup.py build_ext --inplace
}
stage_test() {
  step gpu_tests python3 -m pytest -m gpu -q tests
}
stage_sanitize() {
  for tool in memcheck racecheck synccheck; do
    step "sanitizer_$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 python3 -m pytest -m gpu -q -x tests
  done
  # initcheck also flags reads inside cuBLAS and the caching allocator: check our kernels.
  step sanitizer_initcheck compute-sanitizer --tool initcheck --error-exitcode 1 --kernel-name regex:sltrain \
    python3 -m pytest -m gpu -q -x tests
}
stage_cuda_bench() {
  step cmake_build bash -c "cmake -S . -B build_gpu -DCMAKE_CUDA_ARCHITECTURES=90 && cmake --build build_gpu -j \$(nproc)"
  for bench in csr adam support; do
    step "bench_cuda_$bench" env SLTRAIN_BENCH_JSON="$RESULTS/bench_cuda.jsonl" "./build_gpu/bench_cuda_$bench"
  done
}
stage_bench() {
  step bench_layer_training python3 benchmarks/bench_layer.py --preset training --out "$RESULTS"
  step bench_layer_decode python3 benchmarks/bench_layer.py --preset decode --out "$RESULTS"
  step bench_support python3 benchmarks/bench_support.py --config 7b --device cuda --out "$RESULTS"
  step bench_optim python3 benchmarks/bench_optim.py --config 1b --device cuda --out "$RESULTS"
  step bench_train python3 benchmarks/bench_train.py --out "$RESULTS"
}
stage_smoke() {
  # World-size-1 NCCL runs of the multi-GPU path: DDP; FSDP2 with per-layer updates, stopped and resumed.
  SMOKE=(--config 9m --method sltrain --steps 6 --batch-size 4 --eval-every 3 --device cuda)
  step nccl_smoke_ddp python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m sltrain_ext.train \
    --dist ddp "${SMOKE[@]}" --out "$RESULTS/nccl_smoke_ddp"
  step nccl_smoke_fsdp bash -c "python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m sltrain_ext.train \
    --dist fsdp --per-layer ${SMOKE[*]} --out $RESULTS/nccl_smoke_fsdp --stop-after 3 && \
  python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m sltrain_ext.train \
    --dist fsdp --per-layer ${SMOKE[*]} --out $RESULTS/nccl_smoke_fsdp --resume"
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(build test sanitize cuda_bench bench smoke)
for stage in "${stages[@]}"; do
  declare -F "stage_$stage" > /dev/null || { echo "unknown stage '$stage'" >&2; exit 2; }
  "stage_$stage"
done
tar -C "$OUT" -czf "$OUT/gpu_results.tar.gz" gpu_results && rm -rf "$RESULTS"
exit $status
