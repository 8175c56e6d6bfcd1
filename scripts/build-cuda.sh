#!/usr/bin/env bash
# Builds crosstrain with candle's CUDA backend (`--features cuda`) on a machine that has no
# GPU and no CUDA toolkit, for a GPU machine that has a driver but no Rust toolchain and no
# registry access. Output: target/cuda/release/crosstrain (copy it there with the model).
#
# How: NVIDIA's compiler comes from PyPI with pip (nvidia-cuda-nvcc and the headers), pinned
# to the GPU machine's CUDA version, because candle compiles its kernels to PTX at build time
# and a driver cannot load PTX newer than itself. candle links cudarc against libcuda,
# libnvrtc, libcurand, libcublas and libcublasLt; the build links against empty stand-ins
# with the right sonames (the real libraries are the GPU machine's: its driver's libcuda and
# the nvidia-* wheels PyTorch installs), and scripts/gpu-check.sh points the loader at them.
#
#   CUDA_VERSION  the GPU machine's CUDA version, as `nvidia-smi` prints it (default 13.0)
#   CUDA_COMPUTE_CAP  the GPU's compute capability without the dot (default 90: H100/H200)
set -euo pipefail
cd "$(dirname "$0")/.."

cuda_version=${CUDA_VERSION:-13.0}
major=${cuda_version%%.*}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
venv=target/cuda-venv

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# nvcc's own dependencies (nvvm, crt) are pinned too: left free, pip takes the newest, whose
# PTX the pinned ptxas (and the driver) reject.
"$venv/bin/pip" install -q \
    "nvidia-cuda-nvcc==$cuda_version.*" "nvidia-nvvm==$cuda_version.*" \
    "nvidia-cuda-crt==$cuda_version.*" "nvidia-cuda-runtime==$cuda_version.*" \
    "nvidia-cuda-cccl==$cuda_version.*"
cuda_root=$("$venv/bin/python" -c "import os, nvidia; print(os.path.join(nvidia.__path__[0], 'cu$major'))")
[ -x "$cuda_root/bin/nvcc" ] || { echo "no nvcc under $cuda_root" >&2; exit 1; }

# Link-time stand-ins: sonames as CUDA $major ships them.
stubs=$PWD/target/cuda/stubs
mkdir -p "$stubs"
: > "$stubs/empty.c"
for entry in "cuda:1" "nvrtc:$major" "curand:10" "cublas:$major" "cublasLt:$major"; do
    name=${entry%%:*}
    soname_version=${entry##*:}
    cc -shared -o "$stubs/lib$name.so" -Wl,-soname,"lib$name.so.$soname_version" "$stubs/empty.c"
done

export PATH="$cuda_root/bin:$PATH" CUDA_PATH="$cuda_root" CUDA_ROOT="$cuda_root"
# The symbols stay undefined in the binary and bind at start-up to the real libraries.
export RUSTFLAGS="-L native=$stubs -C link-arg=-Wl,--unresolved-symbols=ignore-in-object-files"
CARGO_TARGET_DIR=target/cuda cargo build --release -p crosstrain --features cuda
ls -l target/cuda/release/crosstrain
