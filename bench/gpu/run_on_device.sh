#!/usr/bin/env bash
# The GPU bundle's device run, in one call (see bench/README.md, "GPU"):
#   bash bench/gpu/run_on_device.sh [--cpu-only] [--bundle TAR_OR_DIR] [--budget SECONDS]
# Uses the bundle made by bench/gpu/make_bundle.sh (default: bench/gpu/build/carry/ssdlite-gpu-bundle.tar.xz,
# else the unpacked bench/gpu/build/ssdlite-gpu-bundle) and writes logs, comparisons and results.json to
# $OUT (else ./gpu-results). Needs: python3 with numpy (with PyTorch for the PyTorch timings), and cuBLAS,
# cuBLASLt and cuRAND (libcublas.so.13, libcublasLt.so.13, libcurand.so.10), found in python3's
# site-packages (PyTorch's nvidia-* wheels) or in the folders of $SSDLITE_CUDA_LIB_DIRS (colon-separated).
#
# Steps, in this order, each with its own timeout, all within --budget (default 540 s, the whole run):
#   1. device_query;
#   2. kernels: a small net of depthwise 3x3 convolutions and ReLU6 (bundle_nets.py), one SGD step from
#      the same weights on CPU, CPU without the depthwise kernels, GPU, GPU without them: gradients must
#      agree to float rounding (compare_snapshots.py);
#   3. ssdlite: the same for the SSDLite-300 train net on a fixed coco-mini batch of 8 (no augmentation):
#      BatchNorm batch statistics (forward) and all gradients, judged against the CPU-vs-CPU-without-
#      depthwise-kernels differences (the noise floor of this deep net);
#   4. caffe time (GPU) of the train net at batch 24 and 64, with and without the depthwise kernels;
#   5. caffe train (GPU) at batch 24 (up to 300 iterations) and 64 (up to 200), coco-mini, augmentation on;
#   6. PyTorch (bench/caffe_vs_pytorch.py's translation of the same net) at batch 24 and 64, eager and
#      torch.compile (bench/gpu/torch_ssdlite.py);
#   7. results.json (bench/gpu/summarize_run.py).
# --cpu-only (or SSDLITE_GPU_CPU_ONLY=1) runs what needs no GPU, for checking a bundle on a machine
# without one: the library check, steps 2-3 in CPU modes only (also with 1 thread), caffe time and a
# 2-iteration caffe train on CPU, PyTorch on CPU if importable. LD_LIBRARY_PATH is replaced, not extended.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cpu_only=${SSDLITE_GPU_CPU_ONLY:-0}
bundle=""
budget=${SSDLITE_GPU_BUDGET_S:-540}
while [ "$#" -gt 0 ]; do
  case "$1" in
    --cpu-only) cpu_only=1 ;;
    --bundle) bundle=${2:?--bundle needs a path}; shift ;;
    --budget) budget=${2:?--budget needs seconds}; shift ;;
    -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
t0=$SECONDS
out=${OUT:-$PWD/gpu-results}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
python=${SSDLITE_DEVICE_PYTHON:-python3}
log() { echo "[device-run $((SECONDS - t0))s] $*" | tee -a "$out/run.log" >&2; }
die() { echo "error: $*" | tee -a "$out/run.log" >&2; exit 1; }

# ------------------------------------------------------------------------------------------- the bundle
if [ -z "$bundle" ]; then
  for candidate in "$here/build/carry/ssdlite-gpu-bundle.tar.xz" "$here/build/ssdlite-gpu-bundle"; do
    [ -e "$candidate" ] && { bundle=$candidate; break; }
  done
  [ -n "$bundle" ] || die "no bundle: run bench/gpu/make_bundle.sh first (or pass --bundle)"
fi
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/ssdlite-gpu-run.XXXXXX")
if [ -f "$bundle" ]; then
  if command -v xz > /dev/null; then
    tar -xJf "$bundle" -C "$run_dir" || die "could not unpack $bundle"
  else  # no xz on the device: Python's lzma
    "$python" -c 'import sys, tarfile
with tarfile.open(sys.argv[1]) as tar:
    try:
        tar.extractall(sys.argv[2], filter="data")
    except TypeError:
        tar.extractall(sys.argv[2])' "$bundle" "$run_dir" || die "could not unpack $bundle"
  fi
  B="$run_dir/ssdlite-gpu-bundle"
else
  B=$(cd "$bundle" && pwd)
fi
[ -x "$B/bin/caffe" ] && [ -f "$B/manifest.json" ] || die "$B is not a bundle (no bin/caffe or manifest.json)"
work="$run_dir/work"
mkdir -p "$work"
cp "$B/manifest.json" "$out/bundle_manifest.json"
log "bundle $bundle (unpacked at $B), results to $out, budget ${budget}s, cpu-only $cpu_only"

# ----------------------------------------------------------------- CUDA libraries from the environment
cuda_dirs=$(
  {
    tr ':' '\n' <<< "${SSDLITE_CUDA_LIB_DIRS:-}"
    "$python" -c 'import site, sys
paths = site.getsitepackages() + [site.getusersitepackages()] + [p for p in sys.path if p.endswith("-packages")]
print("\n".join(dict.fromkeys(paths)))' 2>/dev/null
  } | while read -r base; do
    [ -n "$base" ] && [ -d "$base" ] || continue
    find "$base" -maxdepth 4 \( -name 'libcublas.so.13' -o -name 'libcublasLt.so.13' -o -name 'libcurand.so.10' \
      -o -name 'libcudart.so.13' \) -printf '%h\n' 2>/dev/null
  done | awk '!seen[$0]++' | paste -sd: -
)
for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
  found=""
  IFS=: read -ra dirs <<< "$cuda_dirs"
  for dir in "${dirs[@]}"; do [ -e "$dir/$lib" ] && found=$dir/$lib && break; done
  [ -n "$found" ] || die "$lib not found in $python's site-packages nor in \$SSDLITE_CUDA_LIB_DIRS (the bundle does not carry cuBLAS/cuRAND; pip install nvidia-cublas nvidia-curand, or point SSDLITE_CUDA_LIB_DIRS at them)"
  log "$lib: $found"
done
export LD_LIBRARY_PATH="$cuda_dirs"
export GLOG_logtostderr=1
threads=$(nproc)
export OMP_NUM_THREADS=$threads
caffe="$B/bin/caffe"

# A device whose libstdc++ is older than the build's: use the bundle's copy (lib/compat).
if ! "$caffe" --version > "$out/logs/caffe_version.log" 2>&1; then
  if grep -q -E 'GLIBCXX|CXXABI|GCC_' "$out/logs/caffe_version.log" && [ -d "$B/lib/compat" ]; then
    export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$B/lib/compat"
    log "the system libstdc++ is too old for the bundle: using lib/compat"
    "$caffe" --version > "$out/logs/caffe_version.log" 2>&1 || die "bin/caffe does not start: $(tail -n 3 "$out/logs/caffe_version.log")"
  else
    die "bin/caffe does not start: $(tail -n 3 "$out/logs/caffe_version.log")"
  fi
fi
# Every library must come from the bundle, the CUDA folders above or the C/C++ runtime of the system.
ldd "$caffe" "$B/lib/libcaffe.so" > "$out/logs/ldd.log" 2>&1
"$python" - "$B" "$cuda_dirs" "$out/logs/ldd.log" > "$out/libraries.json" <<'EOF' || die "libraries: $(cat "$out/libraries.json")"
import json, os, re, sys
bundle, cuda_dirs, ldd = sys.argv[1], [d for d in sys.argv[2].split(":") if d], sys.argv[3]
system = re.compile(r"^(libc|libm|libdl|libpthread|librt|libresolv|libutil|libnsl|libanl|libstdc\+\+|libgcc_s|ld-linux.*|libmvec|linux-vdso)\.so")
places, bad = {}, []
for line in open(ldd):
    m = re.match(r"\s*(\S+) => (.*?)(?: \(0x[0-9a-f]+\))?$", line)
    if not m:
        continue
    name, path = m.groups()
    real = os.path.realpath(path) if path != "not found" else path
    if real.startswith(os.path.realpath(bundle) + os.sep):
        where = "bundle"
    elif any(real.startswith(os.path.realpath(d) + os.sep) for d in cuda_dirs):
        where = "cuda"
    elif system.match(name) and path != "not found":
        where = "system"
    else:
        where = "OUTSIDE" if path != "not found" else "NOT FOUND"
        bad.append(f"{name} => {path}")
    places[name] = {"path": path, "from": where}
print(json.dumps({"ok": not bad, "problems": bad, "libraries": places}, indent=1))
sys.exit(1 if bad else 0)
EOF
log "libraries: all from the bundle, the CUDA folders or the system C/C++ runtime"

# ------------------------------------------------------------------------------------------- step runner
printf 'step\tstatus\tseconds\tlimit_s\n' > "$out/steps.tsv"
reserve=25  # for the summary
run_step() {  # run_step NAME LIMIT_S CMD... (in the bundle's root: its nets name data/ relatively)
  local name=$1 limit=$2 left start rc status
  shift 2
  left=$((budget - (SECONDS - t0) - reserve))
  if [ "$left" -lt 15 ]; then
    printf '%s\tskipped (time budget)\t0\t0\n' "$name" >> "$out/steps.tsv"
    log "$name: skipped, $left s left"
    return 99
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  start=$SECONDS
  (cd "$B" && timeout --kill-after=10 "$limit" "$@") > "$out/logs/$name.log" 2>&1
  rc=$?
  case $rc in 0) status=ok ;; 124|137) status="timeout" ;; *) status="failed ($rc)" ;; esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" "$limit" >> "$out/steps.tsv"
  log "$name: $status in $((SECONDS - start)) s (limit $limit s)"
  return $rc
}
solver() {  # solver TEMPLATE NET PREFIX MAX_ITER [DISPLAY] -> path of the filled-in solver
  local file="$work/$(basename "$3").solver.prototxt"
  sed -e "s#@NET@#$2#" -e "s#@PREFIX@#$3#" -e "s#@MAX_ITER@#$4#" ${5:+-e "s#^display: .*#display: $5#"} \
    "$B/nets/$1.template" > "$file"
  echo "$file"
}
gpu_flag=(-gpu 0)

# One SGD step from the same weights in several modes, then compare_snapshots.py.
# compare_runs NAME NET NODW_NET LIMIT_CPU LIMIT_GPU [compare options...]
compare_runs() {
  local name=$1 net=$2 nodw=$3 limit_cpu=$4 limit_gpu=$5
  shift 5
  local init="$work/${name}_init" weights candidates=()
  run_step "${name}_init" 60 "$caffe" train -solver "$(solver solver_init "$net" "$init" 0)" || return 1
  weights="${init}_iter_0.caffemodel"
  run_step "${name}_cpu" "$limit_cpu" "$caffe" train -solver "$(solver solver_compare "$net" "$work/${name}_cpu" 1)" \
    -weights "$weights" || return 1
  run_step "${name}_cpu_nodw" "$limit_cpu" "$caffe" train \
    -solver "$(solver solver_compare "$nodw" "$work/${name}_cpu_nodw" 1)" -weights "$weights" \
    && candidates+=(--candidate "cpu_nodw=$work/${name}_cpu_nodw_iter_1")
  if [ "$cpu_only" = 1 ]; then
    OMP_NUM_THREADS=1 run_step "${name}_cpu_1thread" "$limit_cpu" "$caffe" train \
      -solver "$(solver solver_compare "$net" "$work/${name}_cpu_1thread" 1)" -weights "$weights" \
      && candidates+=(--candidate "cpu_1thread=$work/${name}_cpu_1thread_iter_1")
  else
    run_step "${name}_gpu" "$limit_gpu" "$caffe" train -solver "$(solver solver_compare "$net" "$work/${name}_gpu" 1)" \
      -weights "$weights" "${gpu_flag[@]}" && candidates+=(--candidate "gpu=$work/${name}_gpu_iter_1")
    run_step "${name}_gpu_nodw" "$limit_gpu" "$caffe" train \
      -solver "$(solver solver_compare "$nodw" "$work/${name}_gpu_nodw" 1)" -weights "$weights" "${gpu_flag[@]}" \
      && candidates+=(--candidate "gpu_nodw=$work/${name}_gpu_nodw_iter_1")
  fi
  [ "${#candidates[@]}" -gt 0 ] || return 1
  run_step "${name}_compare" 60 "$python" "$here/compare_snapshots.py" --reference "cpu=$work/${name}_cpu_iter_1" \
    "${candidates[@]}" --json "$out/compare_${name}.json" "$@"
}

# ------------------------------------------------------------------------------------------------ steps
if [ "$cpu_only" = 1 ]; then
  compare_runs kernels nets/kernels.prototxt nets/kernels_nodw.prototxt 60 60 --layers "$B/nets/kernels_layers.json"
  net_b24=nets/train_b24.prototxt
  compare_runs ssdlite nets/compare.prototxt nets/compare_nodw.prototxt 180 180 --layers "$B/nets/layers.json" \
    --noise-floor cpu_nodw
  if grep -q -E 'CUDA driver version is insufficient|no CUDA-capable device' "$out/logs/ssdlite_init.log"; then
    # The CUDA build's data layers start a prefetch thread that asks the driver for the current device
    # (InternalThread::StartInternalThread): without a driver, only nets without a data layer run.
    note="no CUDA driver here: the CUDA build cannot start a data layer even in CPU mode, so no SSDLite comparison;"
    note="$note caffe time and train ran nets/train_b24_nodata.prototxt (DummyData images, no boxes, no mining)"
    log "$note"
    echo "$note" >> "$out/notes.txt"
    printf 'ssdlite_compare\tskipped (no CUDA driver)\t0\t0\n' >> "$out/steps.tsv"
    net_b24=nets/train_b24_nodata.prototxt
  fi
  run_step time_cpu_b24 240 "$caffe" time -model "$net_b24" -iterations 2
  run_step train_cpu_b24 300 "$caffe" train -solver "$(solver solver_train "$net_b24" "$work/train_cpu_b24" 2 1)"
  if "$python" -c 'import torch' 2>/dev/null; then
    run_step torch_cpu 300 "$python" "$here/torch_ssdlite.py" --layers "$B/nets/layers.json" --device cpu \
      --batches 2 --modes eager --steps 1 --warmup 1 --json "$out/torch.json"
  else
    log "torch_cpu: skipped, $python has no torch"
  fi
else
  run_step device_query 30 "$caffe" device_query "${gpu_flag[@]}"
  command -v nvidia-smi > /dev/null && nvidia-smi > "$out/logs/nvidia-smi.log" 2>&1
  compare_runs kernels nets/kernels.prototxt nets/kernels_nodw.prototxt 60 60 --layers "$B/nets/kernels_layers.json"
  compare_runs ssdlite nets/compare.prototxt nets/compare_nodw.prototxt 120 120 --layers "$B/nets/layers.json" \
    --noise-floor cpu_nodw
  run_step time_gpu_b24 60 "$caffe" time -model nets/train_b24.prototxt -iterations 20 "${gpu_flag[@]}"
  run_step time_gpu_b64 90 "$caffe" time -model nets/train_b64.prototxt -iterations 20 "${gpu_flag[@]}"
  run_step time_gpu_b24_nodw 60 "$caffe" time -model nets/train_b24_nodw.prototxt -iterations 3 "${gpu_flag[@]}"
  run_step time_gpu_b64_nodw 90 "$caffe" time -model nets/train_b64_nodw.prototxt -iterations 2 "${gpu_flag[@]}"
  run_step train_gpu_b24 100 "$caffe" train \
    -solver "$(solver solver_train nets/train_b24.prototxt "$work/train_gpu_b24" 300)" "${gpu_flag[@]}"
  if "$python" -c 'import torch' 2>/dev/null; then
    run_step torch_gpu 150 "$python" "$here/torch_ssdlite.py" --layers "$B/nets/layers.json" --device cuda \
      --batches 24 64 --modes eager compile --steps 10 --warmup 2 --json "$out/torch.json"
  else
    log "torch_gpu: skipped, $python has no torch"
  fi
  run_step train_gpu_b64 100 "$caffe" train \
    -solver "$(solver solver_train nets/train_b64.prototxt "$work/train_gpu_b64" 200)" "${gpu_flag[@]}"
fi

# ---------------------------------------------------------------------------------------------- summary
"$python" "$here/summarize_run.py" --out "$out" --threads "$threads" --elapsed "$((SECONDS - t0))" \
  $([ "$cpu_only" = 1 ] && echo --cpu-only) || log "summary failed"
rm -rf "$run_dir"
log "done in $((SECONDS - t0)) s: $out/results.json"
