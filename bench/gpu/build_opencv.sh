#!/usr/bin/env bash
# A small OpenCV for the GPU bundle: Debian's own OpenCV source (the version installed here, so the same
# ABI and sonames as the libopencv_*406 that Caffe was linked against) with only the modules libcaffe
# links (core, imgproc, imgcodecs, videoio, highgui) and only the JPEG and PNG codecs.
#   bench/gpu/build_opencv.sh PREFIX [JOBS]
# Why: Debian's libopencv-imgcodecs406 needs GDAL, GDCM, OpenEXR, TIFF, WebP and OpenJPEG, and
# libopencv-videoio406/highgui406 need FFmpeg, GStreamer and Qt: ~300 MiB of libraries, while Caffe
# decodes JPEG (and PNG) only and never opens a video or a window in this benchmark. Built this way,
# every symbol libcaffe uses is still defined: VideoCapture opens nothing and imshow raises OpenCV's
# "not implemented" error. Idempotent: PREFIX/.built holds the flags it was built with.
set -euo pipefail
prefix=${1:?usage: build_opencv.sh PREFIX [JOBS]}
jobs=${2:-$(nproc)}
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
work="$prefix.work"
version=$(dpkg-query -W -f '${source:Version}' libopencv-core406 2>/dev/null || true)
if [ -z "$version" ]; then
  echo "error: libopencv-core406 is not installed; the bundle's OpenCV must match Caffe's (install caffe/debian-packages.txt)" >&2
  exit 1
fi
flags=(
  -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_INSTALL_LIBDIR=lib
  -DBUILD_LIST=core,imgproc,imgcodecs,videoio,highgui
  -DBUILD_SHARED_LIBS=ON -DBUILD_TESTS=OFF -DBUILD_PERF_TESTS=OFF -DBUILD_EXAMPLES=OFF -DBUILD_DOCS=OFF
  -DBUILD_opencv_apps=OFF -DBUILD_JAVA=OFF -DBUILD_opencv_python3=OFF -DBUILD_opencv_python2=OFF
  -DBUILD_JPEG=OFF -DBUILD_PNG=OFF -DBUILD_ZLIB=OFF -DWITH_JPEG=ON -DWITH_PNG=ON
  -DWITH_TIFF=OFF -DWITH_WEBP=OFF -DWITH_OPENJPEG=OFF -DWITH_JASPER=OFF -DWITH_OPENEXR=OFF -DWITH_GDAL=OFF
  -DWITH_GDCM=OFF -DWITH_IMGCODEC_HDR=OFF -DWITH_IMGCODEC_SUNRASTER=OFF -DWITH_IMGCODEC_PXM=OFF
  -DWITH_IMGCODEC_PFM=OFF -DWITH_FFMPEG=OFF -DWITH_GSTREAMER=OFF -DWITH_V4L=OFF -DWITH_1394=OFF
  -DWITH_GPHOTO2=OFF -DWITH_GTK=OFF -DWITH_QT=OFF -DWITH_OPENGL=OFF -DWITH_VTK=OFF -DWITH_OPENCL=OFF
  -DWITH_VA=OFF -DWITH_VA_INTEL=OFF -DWITH_TBB=OFF -DWITH_LAPACK=OFF -DWITH_EIGEN=OFF -DWITH_IPP=OFF
  -DWITH_ITT=OFF -DWITH_PROTOBUF=OFF -DWITH_ADE=OFF -DWITH_CAROTENE=OFF -DWITH_QUIRC=OFF -DWITH_OPENMP=OFF
  -DWITH_PTHREADS_PF=ON -DCPU_BASELINE=SSE2 -DCPU_BASELINE_DISABLE=SSE3 -DCPU_DISPATCH=SSE4_1,AVX2
  -DOPENCV_GENERATE_PKGCONFIG=OFF -DCMAKE_SKIP_RPATH=ON -DOPENCV_DOWNLOAD_TRIES_LIST=
)
command -v ccache >/dev/null && flags+=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
stamp="opencv $version ${flags[*]//$prefix/PREFIX}"
if [ -f "$prefix/.built" ] && [ "$(cat "$prefix/.built")" = "$stamp" ]; then
  exit 0
fi
echo "[opencv] building OpenCV $version (core imgproc imgcodecs videoio highgui; JPEG, PNG) into $prefix" >&2
rm -rf "$work" "$prefix"
mkdir -p "$work/lists/partial" "$prefix"
# Debian's source package through apt, with a private source list: the system's apt configuration is left alone.
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" \
  > "$work/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=/nonexistent
          -o "Dir::State::Lists=$work/lists" -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" -qq update
(cd "$work" && apt-get "${apt_opts[@]}" -qq source --download-only "opencv=$version")
upstream=${version%-*}
tar -xJf "$work/opencv_${upstream}.orig.tar.xz" -C "$work"
tar -xJf "$work/opencv_${version}.debian.tar.xz" -C "$work"
src=$(find "$work" -maxdepth 1 -type d -name 'opencv-*' | head -n 1)
# Debian's patches, less those for contrib modules (not built here).
while read -r patch; do
  case "$patch" in ''|'#'*|*OGRE*|*wechat_qrcode*) continue ;; esac
  patch -d "$src" -p1 -s < "$work/debian/patches/$patch"
done < "$work/debian/patches/series"
cmake -S "$src" -B "$work/build" "${flags[@]}" > "$work/configure.log" 2>&1 \
  || { tail -n 30 "$work/configure.log" >&2; echo "error: OpenCV configuration failed (log: $work/configure.log)" >&2; exit 1; }
cmake --build "$work/build" --parallel "$jobs" > "$work/build.log" 2>&1 \
  || { tail -n 30 "$work/build.log" >&2; echo "error: OpenCV build failed (log: $work/build.log)" >&2; exit 1; }
cmake --install "$work/build" > "$work/install.log" 2>&1
printf '%s' "$stamp" > "$prefix/.built"
rm -rf "$work"
echo "[opencv] done: $(ls "$prefix/lib" | tr '\n' ' ')" >&2
