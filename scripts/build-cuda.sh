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
#   FEATURES  cargo features (default cuda); `cuda,nccl` adds data-parallel training across
#             GPUs (NCCL, ranks launched by MPI: needs mpicc and libclang, and stands in for
#             libnccl.so.2 as for the other CUDA libraries)
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

# Link-time stand-ins with the sonames CUDA $major ships. A first link leaves the CUDA symbols
# undefined; the stand-ins are then rebuilt to define exactly those symbols and the binary is
# linked again, so that it records libcuda.so.1, libcublas.so.$major, ... as needed libraries
# and binds their symbols at start-up on the GPU machine.
stubs=$PWD/target/cuda/stubs
mkdir -p "$stubs"
features=${FEATURES:-cuda}
sonames=("cuda:1" "nvrtc:$major" "curand:10" "cublas:$major" "cublasLt:$major")
case ",$features," in *,nccl,*) sonames+=("nccl:2") ;; esac
make_stubs() {  # $1: file of undefined symbols (empty on the first pass)
    for entry in "${sonames[@]}"; do
        name=${entry%%:*}
        : > "$stubs/$name.c"
        while read -r symbol; do
            case "$name:$symbol" in
                cuda:cu[A-Z]* | nvrtc:nvrtc* | curand:curand* | cublasLt:cublasLt* | nccl:nccl*) ;;
                cublas:cublasLt*) continue ;;
                cublas:cublas*) ;;
                *) continue ;;
            esac
            echo "void $symbol(void) {}" >> "$stubs/$name.c"
        done < "$1"
        cc -shared -o "$stubs/lib$name.so" -Wl,-soname,"lib$name.so.${entry##*:}" "$stubs/$name.c"
    done
    # candle's quantized kernels are linked objects that need the CUDA runtime: the real one,
    # from the nvidia-cuda-runtime wheel.
    ln -sf "$cuda_root/lib/libcudart.so.$major" "$stubs/libcudart.so"
}
: > "$stubs/undefined.txt"
make_stubs "$stubs/undefined.txt"

export PATH="$cuda_root/bin:$PATH" CUDA_PATH="$cuda_root" CUDA_ROOT="$cuda_root"
export RUSTFLAGS="-L native=$stubs -C link-arg=-Wl,--unresolved-symbols=ignore-in-object-files"
CARGO_TARGET_DIR=target/cuda cargo build --release -p crosstrain --features "$features"
nm -D --undefined-only target/cuda/release/crosstrain | awk '{print $2}' | sed 's/@.*//' \
    | sort -u > "$stubs/undefined.txt"
make_stubs "$stubs/undefined.txt"
touch host/src/main.rs
CARGO_TARGET_DIR=target/cuda cargo build --release -p crosstrain --features "$features"
readelf -d target/cuda/release/crosstrain | grep NEEDED
ls -l target/cuda/release/crosstrain
