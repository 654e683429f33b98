#!/usr/bin/env bash
# Everything that needs a GPU, in two profiles sized to the device tool's 15
# minutes of GPU time (machine starts, commands and idle waits all counted;
# one command at most 10 minutes). Issue 18 says how the minutes are spent.
#
#   bash benchmarks/gpu_run.sh first    # <= 8 min: CUDA build for Hopper, pytest -m gpu, compute-sanitizer
#                                       # (memcheck, initcheck, racecheck, synccheck) on SANITIZER_CASES,
#                                       # bench_layer --preset training and decode, bench_optim --config 1b,
#                                       # bench_support --config 7b, the bench_cuda_* microbenchmarks
#   bash benchmarks/gpu_run.sh second   # <= 4 min: what `first` did not pass (gpu_state/summary.tsv),
#                                       # the LLaMA-7B memory step, the world-size-1 NCCL runs (--dist ddp;
#                                       # --dist fsdp --per-layer stopped and resumed), bench_train 60M and 350M
#   SLTRAIN_GPU_REHEARSAL=1 bash benchmarks/gpu_run.sh first|second   # here, without a GPU (below)
#
# The device-tool calls (also in README.md, beside the memory table):
#   1. run(command="bash benchmarks/gpu_run.sh first", timeout_s=540)
#   2. here, from the reply's files_at:
#        rm -rf gpu_state && mkdir gpu_state && cp FILES_AT/* gpu_state/ && chmod -R u+w gpu_state
#      (first's summary.tsv and extension.tar.gz, its build, reused by `second` while csrc/, setup.py
#      and torch are unchanged); fix what failed; then, with at least 5 minutes of GPU time left:
#   3. run(command="bash benchmarks/gpu_run.sh second", carry=["gpu_state"], timeout_s=300)
#      (a fresh machine takes a minute or two to start, counted too: where status's budget_left_s is
#      under 420, prefix the command with SLTRAIN_GPU_DEADLINE=<budget_left_s - 180>)
#   4. give_back()
#
# Each stage runs under `timeout` with its own budget, clipped so the whole
# profile ends by its deadline (SLTRAIN_GPU_DEADLINE seconds; 480 first, 240
# second), and a stage that no longer fits is skipped and counted as not
# passed. Stages of one phase run at the same time (correctness checks);
# timed benchmarks run alone. Each stage's log is written under $OUT/logs as
# it runs. At the end everything but the table is packed into one archive,
# so $OUT holds at most four files, none in a folder (the tool returns at
# most 8): summary.txt (the table, also printed last), summary.tsv,
# gpu_<profile>.tar.gz (logs and benchmark results: JSON, markdown, PNG),
# and after `first` extension.tar.gz (the built extension and its sources'
# checksum). The exit status is the number of stages that did not pass.
#
# Rehearsal (only with SLTRAIN_GPU_REHEARSAL=1: without it, where no GPU is
# visible the script stops): what needs no GPU runs for real (the extension
# build, CPU-only; the bench_cuda_* build with nvcc; reusing first's build in
# `second`; the archive and the table); pytest stages collect their -k
# selections instead of running them, and fail if a selected case no longer
# exists; the benchmarks run on the CPU where a small configuration exists
# (bench_train, bench_memory_step, the NCCL runs as gloo runs), else parse
# their device arguments up to an appended --help (choices are checked,
# misspelt flags are not); each key figure is read from a file of the same
# kind (a committed CPU result where the GPU one cannot exist here).
set -uo pipefail
cd "$(dirname "$0")/.."

profile=${1:-}
case "$profile" in
  first) default_deadline=480 ;;
  second) default_deadline=240 ;;
  *) echo "usage: bash benchmarks/gpu_run.sh first|second (SLTRAIN_GPU_REHEARSAL=1 to rehearse without a GPU)" >&2
     exit 2 ;;
esac
DEADLINE=${SLTRAIN_GPU_DEADLINE:-$default_deadline}
REHEARSAL=${SLTRAIN_GPU_REHEARSAL:-0}
RESERVE=20   # seconds kept for the archive and the table
OUT=${OUT:-gpu_out}
LOGS=$OUT/logs
RESULTS=$OUT/results
STATE=gpu_state   # first's summary.tsv and extension, carried into `second`
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
rm -rf "$LOGS" "$RESULTS"
mkdir -p "$LOGS" "$RESULTS"

if [ "$REHEARSAL" != 1 ] && ! nvidia-smi -L > /dev/null 2>&1; then
  echo "gpu_run.sh: no GPU visible (nvidia-smi -L failed); SLTRAIN_GPU_REHEARSAL=1 rehearses without one" >&2
  exit 1
fi

# The small cases every sanitizer tool runs (each kernel family: SpMV and
# SpMM on both paths, odd widths, no tokens, densify, the support sampler,
# both Adam kernels; several dtypes): node-id fragments of
# tests/test_gpu.py, joined into one -k. The rehearsal fails if one of them
# no longer selects a test.
SANITIZER_CASES=(
  "test_sl_matmul_edge_shapes[factored-1-300-40-8-1200-dtype2]"
  "test_sl_matmul_edge_shapes[materialized-16-64-2048-8-4000-dtype2]"
  "test_sl_matmul_edge_shapes[factored-2-3-5461-4-1500-dtype3]"
  "test_sl_matmul_edge_shapes[materialized-5-5461-3-4-1500-dtype0]"
  "test_sl_matmul_edge_shapes[factored-0-5-7-2-9-dtype0]"
  "test_a_strided_bias_is_read_correctly_on_both_paths"
  "test_the_factored_backward_caches_its_csc_and_follows_the_support"
  "test_densify_matches_cpu[dtype2]"
  "test_random_support_equals_cpu[3-5461-8000-9223372036854775807]"
  "test_fused_adam_matches_cpu[dtype2]"
  "test_fused_quantised_adam_within_one_code_of_cpu[dtype2-8]"
  "test_fused_quantised_adam_within_one_code_of_cpu[dtype2-4]"
)
sanitizer_k=$(printf ' or %s' "${SANITIZER_CASES[@]}")
sanitizer_k=${sanitizer_k# or }
# Our kernels live in namespace sltrain::cuda, so their mangled names hold
# "sltrain": compute-sanitizer's kernel filter is --kernel-name kns=SUBSTRING
# (kne= an exact name); initcheck is filtered too, as it also reports reads
# inside cuBLAS and the caching allocator that are not ours.
OUR_KERNELS="--kernel-name kns=sltrain"
NVCC=$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")
SMOKE="--config 9m --method sltrain --steps 6 --batch-size 4 --eval-every 3"
TORCHRUN="$PY -m torch.distributed.run --standalone --nproc_per_node 1 -m sltrain_ext.train"

# ---- stages: command (device), rehearsal command, budget s, figure -------
declare -A CMD REHEARSE BUDGET FIGURE FIGURE_REHEARSAL
stage() {  # stage NAME BUDGET COMMAND REHEARSAL_COMMAND [FIGURE_KIND FIGURE_FILE [REHEARSAL_FIGURE_FILE]]
  BUDGET[$1]=$2 CMD[$1]=$3 REHEARSE[$1]=$4
  FIGURE[$1]="${5:-} ${6:-}" FIGURE_REHEARSAL[$1]="${5:-} ${7:-${6:-}}"
}
has_cuda_ops="$PY -c \"import torch, sltrain_ext; assert torch._C._dispatch_has_kernel_for_dispatch_key('sltrain::sl_matmul', 'CUDA'), 'built without the CUDA sources'; print('CUDA kernels registered, torch', torch.__version__)\""

stage build 240 \
  "$PY setup.py build_ext --inplace && $has_cuda_ops" \
  "SLTRAIN_FORCE_CPU=1 MAX_JOBS=2 $PY setup.py build_ext --inplace && $PY -c 'import sltrain_ext; print(\"built CPU-only\")'" \
  last_line "$LOGS/build.log"
stage bench_cuda_build 240 \
  "cmake -S . -B build_gpu -DSLTRAIN_EMULATOR_TESTS=OFF -DCMAKE_CUDA_COMPILER=$NVCC -DCMAKE_CUDA_ARCHITECTURES=90 \
&& cmake --build build_gpu -j $MAX_JOBS --target bench_cuda_csr bench_cuda_adam bench_cuda_support" \
  "cmake -S . -B build_gpu -DSLTRAIN_EMULATOR_TESTS=OFF -DCMAKE_CUDA_COMPILER=$NVCC -DCMAKE_CUDA_ARCHITECTURES=90 \
&& cmake --build build_gpu -j 2 --target bench_cuda_csr bench_cuda_adam bench_cuda_support" \
  last_line "$LOGS/bench_cuda_build.log"
stage gpu_tests 150 \
  "$PY -m pytest -q -p no:cacheprovider -m gpu tests" \
  "$PY -m pytest -q -p no:cacheprovider --collect-only -m gpu tests" pytest "$LOGS/gpu_tests.log"
for tool in memcheck initcheck racecheck synccheck; do
  filter=$([ "$tool" = memcheck ] || echo "$OUR_KERNELS")
  stage "$tool" 180 \
    "compute-sanitizer --tool $tool $filter --error-exitcode 1 --print-limit 20 \
$PY -m pytest -q -p no:cacheprovider tests/test_gpu.py -k '$sanitizer_k'" \
    "$PY -m pytest -q -p no:cacheprovider --collect-only tests/test_gpu.py -k '$sanitizer_k' > $SCRATCH/$tool.ids \
&& cat $SCRATCH/$tool.ids && $PY -c \"import sys; ids = open('$SCRATCH/$tool.ids').read(); \
missing = [f for f in sys.argv[1:] if f not in ids]; sys.exit(f'no test matches {missing}' if missing else 0)\" \
$(printf "'%s' " "${SANITIZER_CASES[@]}")" \
    sanitizer "$LOGS/$tool.log"
done
stage bench_layer_training 120 \
  "$PY benchmarks/bench_layer.py --preset training --repeats 20 --out $RESULTS" \
  "$PY benchmarks/bench_layer.py --preset training --repeats 20 --out $RESULTS --help > /dev/null" \
  layer "$RESULTS/bench_layer_training_cuda.json" benchmarks/results/bench_layer_cpu_cpu.json
stage bench_layer_decode 60 \
  "$PY benchmarks/bench_layer.py --preset decode --out $RESULTS" \
  "$PY benchmarks/bench_layer.py --preset decode --out $RESULTS --help > /dev/null" \
  decode "$RESULTS/bench_layer_decode_cuda.json" benchmarks/results/bench_layer_cpu_cpu.json
stage bench_optim_1b 90 \
  "$PY benchmarks/bench_optim.py --config 1b --out $RESULTS" \
  "$PY benchmarks/bench_optim.py --config 1b --out $RESULTS --help > /dev/null" \
  optim "$RESULTS/bench_optim_1b_cuda.json" benchmarks/results/bench_optim_60m_cpu.json
stage bench_support_7b 60 \
  "$PY benchmarks/bench_support.py --config 7b --device cuda --out $RESULTS" \
  "$PY benchmarks/bench_support.py --config 7b --device cuda --out $RESULTS --help > /dev/null" \
  support "$RESULTS/bench_support_7b_cuda.json" benchmarks/results/bench_support_1b_cpu.json
for family in csr adam support; do
  stage "bench_cuda_$family" 40 \
    "SLTRAIN_BENCH_JSON=$RESULTS/bench_cuda_$family.jsonl ./build_gpu/bench_cuda_$family" \
    "test -x ./build_gpu/bench_cuda_$family" \
    cuda_bench "$RESULTS/bench_cuda_$family.jsonl"
done
stage memory_step_7b 120 \
  "$PY benchmarks/bench_memory_step.py --config 7b --batch 4 --seq-len 256 --out $RESULTS" \
  "$PY benchmarks/bench_memory_step.py --config 9m --batch 2 --seq-len 64 --device cpu --out $RESULTS" \
  memory_step "$RESULTS/bench_memory_step_7b_cuda.json" "$RESULTS/bench_memory_step_9m_cpu.json"
stage nccl_ddp 150 \
  "$TORCHRUN --dist ddp $SMOKE --device cuda --out $SCRATCH/ddp" \
  "$TORCHRUN --dist ddp $SMOKE --device cpu --out $SCRATCH/ddp" \
  train_run "$LOGS/nccl_ddp.log"
stage nccl_fsdp_resume 150 \
  "$TORCHRUN --dist fsdp --per-layer $SMOKE --device cuda --out $SCRATCH/fsdp --stop-after 3 \
&& $TORCHRUN --dist fsdp --per-layer $SMOKE --device cuda --out $SCRATCH/fsdp --resume" \
  "$TORCHRUN --dist fsdp --per-layer $SMOKE --device cpu --out $SCRATCH/fsdp --stop-after 3 \
&& $TORCHRUN --dist fsdp --per-layer $SMOKE --device cpu --out $SCRATCH/fsdp --resume" \
  train_run "$LOGS/nccl_fsdp_resume.log"
stage bench_train 150 \
  "$PY benchmarks/bench_train.py --configs 60m:256,350m:128 --out $RESULTS" \
  "$PY benchmarks/bench_train.py --configs 9m:2 --seq-len 32 --steps 1 --warmup 1 --device cpu --out $RESULTS" \
  train "$RESULTS/bench_train_cuda.json" "$RESULTS/bench_train_cpu.json"

# ---- running them ----------------------------------------------------------
started=$SECONDS
order=()      # stages in the order they ran, for the table
declare -A STATUS SECONDS_TAKEN KEY

run_stage() {  # run_stage NAME [tee]: one stage, under its clipped budget; writes $SCRATCH/NAME.result
  local name=$1 command=${CMD[$1]} figure=${FIGURE[$1]} left limit rc status
  [ "$REHEARSAL" = 1 ] && command=${REHEARSE[$name]} figure=${FIGURE_REHEARSAL[$name]}
  left=$((DEADLINE - RESERVE - (SECONDS - started)))
  limit=$(( BUDGET[$name] < left ? BUDGET[$name] : left ))
  local begun=$SECONDS
  if [ "$limit" -lt 10 ]; then
    printf 'skipped (no time)\t0\t%s s were left\n' "$left" > "$SCRATCH/$name.result"
    return
  fi
  echo "=== $name (limit ${limit} s): $command" >> "$LOGS/$name.log"
  if [ "${2:-}" = tee ]; then  # alone in its phase: its output also goes to the reply as it comes
    timeout --kill-after=10 "$limit" bash -c "$command" 2>&1 | tee -a "$LOGS/$name.log"
  else
    timeout --kill-after=10 "$limit" bash -c "$command" >> "$LOGS/$name.log" 2>&1
  fi
  rc=$?
  case $rc in
    0) status=$([ "$REHEARSAL" = 1 ] && echo rehearsed || echo pass) ;;
    124|137) status="TIMEOUT (${limit} s)" ;;
    *) status="FAIL (exit $rc)" ;;
  esac
  local key=""
  [ -n "${figure// /}" ] && key=$($PY benchmarks/gpu_figures.py $figure 2>&1 | tail -n 1)
  printf '%s\t%s\t%s\n' "$status" "$((SECONDS - begun))" "$key" > "$SCRATCH/$name.result"
}

run_phase() {  # run_phase NAME...: these stages at the same time, then their results
  local name
  for name in "$@"; do
    [ -n "${CMD[$name]+x}" ] || { echo "gpu_run.sh: no stage '$name'" >&2; exit 2; }
    echo "--- $name started at $((SECONDS - started)) s"
    if [ $# -eq 1 ]; then run_stage "$name" tee; else run_stage "$name" & fi
  done
  wait
  for name in "$@"; do
    IFS=$'\t' read -r STATUS[$name] SECONDS_TAKEN[$name] KEY[$name] < "$SCRATCH/$name.result"
    order+=("$name")
    echo "--- $name: ${STATUS[$name]} in ${SECONDS_TAKEN[$name]} s ${KEY[$name]}"
    [[ ${STATUS[$name]} =~ ^(pass|reused|rehearsed)$ || ! -f $LOGS/$name.log ]] || tail -n 15 "$LOGS/$name.log"
  done
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1
  $PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  "$NVCC" --version 2>&1 | tail -n 2
  compute-sanitizer --version 2>&1 | tail -n 1
  compute-sanitizer --help 2>&1 | grep -A 12 -e '--kernel-name'
  echo "profile $profile, deadline $DEADLINE s, rehearsal $REHEARSAL"
} > "$LOGS/environment.log" 2>&1
head -n 4 "$LOGS/environment.log"

sources_checksum() {  # what the built extension depends on: its sources and torch
  { find csrc setup.py -type f -print0 | sort -z | xargs -0 sha256sum; $PY -c "import torch; print(torch.__version__)"; } \
    | sha256sum | cut -d' ' -f1
}

if [ "$profile" = first ]; then
  run_phase build bench_cuda_build
  run_phase gpu_tests memcheck initcheck racecheck synccheck
  for name in bench_layer_training bench_layer_decode bench_optim_1b bench_support_7b \
              bench_cuda_csr bench_cuda_adam bench_cuda_support; do
    run_phase "$name"
  done
else
  # The extension `first` built is reused while csrc/, setup.py and torch are unchanged.
  unpacked=$SCRATCH/extension
  extension_works=$([ "$REHEARSAL" = 1 ] && echo "$PY -c 'import sltrain_ext'" || echo "$has_cuda_ops")
  if [ -f "$STATE/extension.tar.gz" ] && mkdir -p "$unpacked" && tar -C "$unpacked" -xzf "$STATE/extension.tar.gz" \
     && [ "$(cat "$unpacked/extension.sha256")" = "$(sources_checksum)" ] && cp "$unpacked"/_C.*.so sltrain_ext/ \
     && bash -c "$extension_works" >> "$LOGS/build.log" 2>&1; then
    printf 'reused\t0\tfirst'"'"'s build (same sources and torch)\n' > "$SCRATCH/build.result"
    IFS=$'\t' read -r STATUS[build] SECONDS_TAKEN[build] KEY[build] < "$SCRATCH/build.result"
    order+=(build)
  else
    run_phase build
  fi
  # Again, whatever `first` did not pass, in first's phases (the timed ones alone).
  if [ -f "$STATE/summary.tsv" ]; then
    mapfile -t again < <(awk -F'\t' 'NR > 1 && $2 !~ /^(pass|reused|rehearsed)$/ && $1 != "build" {print $1}' "$STATE/summary.tsv")
  else
    echo "gpu_run.sh: no $STATE/summary.tsv (copy first's files there and carry it): nothing of first's is rerun"
    again=()
  fi
  checks=() timed=()
  for name in "${again[@]}"; do
    case $name in
      gpu_tests|memcheck|initcheck|racecheck|synccheck|bench_cuda_build) checks+=("$name") ;;
      bench_cuda_*) [[ " ${checks[*]} " == *" bench_cuda_build "* ]] || [ -x "build_gpu/$name" ] \
                      || checks+=(bench_cuda_build); timed+=("$name") ;;
      *) timed+=("$name") ;;
    esac
  done
  [ ${#checks[@]} -eq 0 ] || run_phase "${checks[@]}"
  for name in "${timed[@]}"; do run_phase "$name"; done
  run_phase memory_step_7b nccl_ddp nccl_fsdp_resume
  run_phase bench_train
fi

# ---- the table, the archive, the exit status ---------------------------------
failures=0
{
  printf 'stage\tstatus\tseconds\tkey figure\n'
  for name in "${order[@]}"; do
    printf '%s\t%s\t%s\t%s\n' "$name" "${STATUS[$name]}" "${SECONDS_TAKEN[$name]}" "${KEY[$name]}"
  done
} > "$OUT/summary.tsv"
for name in "${order[@]}"; do
  [[ ${STATUS[$name]} =~ ^(pass|reused|rehearsed)$ ]] || failures=$((failures + 1))
done
built=$(ls sltrain_ext/_C.*.so 2>/dev/null | head -n 1)
if [ "$profile" = first ] && [ -n "$built" ]; then  # for `second`: the extension and what it was built from
  sources_checksum > "$SCRATCH/extension.sha256"
  tar -czf "$OUT/extension.tar.gz" -C sltrain_ext "$(basename "$built")" -C "$SCRATCH" extension.sha256
  if [ "$(stat -c %s "$OUT/extension.tar.gz")" -gt $((15 << 20)) ]; then  # the tool returns files up to 16 MiB
    rm "$OUT/extension.tar.gz"
    echo "the built extension packs to over 15 MiB: not returned, so \`second\` builds it again"
  fi
fi
tar -C "$OUT" -czf "$OUT/gpu_$profile.tar.gz" logs results && rm -rf "$LOGS" "$RESULTS"
{
  echo "gpu_run.sh $profile$([ "$REHEARSAL" = 1 ] && echo ' (rehearsal: no GPU stage ran; stand-in figures)'): $failures not passed," \
       "$((SECONDS - started)) s of $DEADLINE; logs and results in $OUT/gpu_$profile.tar.gz"
  awk -F'\t' '{printf "%-22s %-20s %7s  %s\n", $1, $2, $3, $4}' "$OUT/summary.tsv"
} > "$OUT/summary.txt"
cat "$OUT/summary.txt"
exit $((failures > 255 ? 255 : failures))
