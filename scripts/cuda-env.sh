#!/usr/bin/env bash
# The CUDA build environment of recallseg on a machine without a GPU or a CUDA toolkit.
#
#   source scripts/cuda-env.sh            # once per shell; installs what is missing
#   cargo build --release -p recallseg-cli --features cuda
#
# What it does (docs/training.md, "GPU"):
# 1. a Python virtual environment (RECALLSEG_CUDA_VENV, default .cuda-venv/) with NVIDIA's CUDA
#    13.0 wheels: nvcc, NVVM, the CRT headers, CCCL (nvcc stops at `#include <nv/target>`
#    without it), the runtime, cuBLAS, cuRAND, NVRTC, and NCCL 2.30 (feature `nccl`). 13.0 is
#    pinned to match driver 580 of the GPU machines at hand: a newer nvcc emits PTX that
#    driver cannot load, and an unpinned NVVM makes ptxas reject PTX `.version 9.5`;
# 2. unversioned `.so` links (libcublas.so → libcublas.so.13, …) so that the linker's `-l`
#    finds the wheels' libraries;
# 3. a link-time stub of the driver library, libcuda.so (soname libcuda.so.1), defining every
#    driver entry point cudarc declares (each returns CUDA_ERROR_NO_DEVICE). candle 0.11 turns on cudarc's `dynamic-linking`, so the
#    binaries link against libcuda, which only an NVIDIA driver installation provides; the stub
#    satisfies the linker (as the CUDA toolkit's lib/stubs/libcuda.so does) and the real driver's
#    libcuda.so.1 is loaded when the program runs on a GPU machine. The stub is never shipped.
# 4. the variables candle's and cudarc's build scripts read: CUDA_ROOT, CUDA_PATH, PATH,
#    CUDA_COMPUTE_CAP (90: H100/H200; override before sourcing), LIBRARY_PATH, and
#    CUDAFORGE_THREADS (nvcc jobs of candle-kernels' build script: every core, not half);
# 5. RECALLSEG_CUDA_STUB_LD_PATH: an LD_LIBRARY_PATH that runs a CUDA build here (the stub as
#    libcuda.so.1, the wheels' libraries), for CI's MPI and NCCL tests of that build.
#
# Running the binaries needs a driver and the same runtime libraries: on the GPU machine point
# LD_LIBRARY_PATH at a folder holding libcublas*, libcurand, libnvrtc*, libcudart (the wheels of
# PyTorch's CUDA build do), see scripts/gpu-check.sh.

# Sourced into the caller's shell: no `set -e` here (it would stay on there).
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${RECALLSEG_CUDA_VENV:-$_here/.cuda-venv}"
_py="${PYTHON:-python3}"

if [ ! -x "$_venv/bin/python" ]; then
    echo "cuda-env: creating $_venv" >&2
    "$_py" -m venv "$_venv"
fi
if ! "$_venv/bin/python" -c "import nvidia" 2>/dev/null || [ ! -x "$(ls -d "$_venv"/lib/python3*/site-packages/nvidia/cu13 2>/dev/null)/bin/nvcc" ]; then
    echo "cuda-env: installing the CUDA 13.0 wheels (about 1.2 GB)" >&2
    "$_venv/bin/pip" install -q \
        "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88" \
        "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cublas==13.*" \
        "nvidia-curand==10.*" "nvidia-cuda-nvrtc==13.0.*"
fi
# NCCL for the `nccl` feature (data parallelism on GPUs): 2.30, the API version cudarc's `nccl`
# bindings are generated for.
if [ ! -f "$(ls -d "$_venv"/lib/python3*/site-packages 2>/dev/null | head -n 1)/nvidia/nccl/lib/libnccl.so.2" ]; then
    echo "cuda-env: installing NCCL 2.30 (about 300 MB)" >&2
    "$_venv/bin/pip" install -q "nvidia-nccl-cu13==2.30.*"
fi

CUDA_ROOT="$(ls -d "$_venv"/lib/python3*/site-packages/nvidia/cu13 | head -n 1)"
export CUDA_ROOT CUDA_PATH="$CUDA_ROOT"
export PATH="$CUDA_ROOT/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"

# Unversioned links for `-l…` and the driver stub, in one folder of our own.
_links="$_venv/recallseg-link"
mkdir -p "$_links"
for _lib in cublas cublasLt cudart curand nvrtc; do
    _real="$(ls "$CUDA_ROOT"/lib/lib$_lib.so.* 2>/dev/null | grep -v builtins | head -n 1 || true)"
    if [ -n "$_real" ]; then
        ln -sf "$_real" "$_links/lib$_lib.so"
    fi
done
ln -sf "$(ls -d "$_venv"/lib/python3*/site-packages | head -n 1)/nvidia/nccl/lib/libnccl.so.2" "$_links/libnccl.so"
if [ ! -f "$_links/libcuda.so" ] || ! grep -q "return 100" "$_links/libcuda-stub.c" 2>/dev/null; then
    # Every `cu…` function cudarc's driver bindings declare, returning CUDA_ERROR_NO_DEVICE
    # (100): with the stub on LD_LIBRARY_PATH a CUDA build runs on a machine without a GPU and
    # finds no device (how scripts/gpu-check.sh is rehearsed), instead of crashing.
    _cudarc="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -z "$_cudarc" ]; then
        (cd "$_here" && cargo fetch --quiet) || true
        _cudarc="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort -V | tail -n 1 || true)"
    fi
    if [ -z "$_cudarc" ]; then
        echo "cuda-env: cudarc's sources could not be fetched (cargo fetch)" >&2
        return 1 2>/dev/null || exit 1
    fi
    grep -rhoE '\bpub (unsafe )?fn cu[A-Za-z0-9_]+' "$_cudarc/src/driver/sys" |
        sed -E 's/pub (unsafe )?fn //' | sort -u |
        awk '{ printf "int %s(void) { return 100; }\n", $1 }' > "$_links/libcuda-stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$_links/libcuda.so" "$_links/libcuda-stub.c"
    echo "cuda-env: built the link-time driver stub ($(wc -l < "$_links/libcuda-stub.c") entry points)" >&2
fi
export LIBRARY_PATH="$_links:$CUDA_ROOT/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
# Running a CUDA build on this machine (CI's MPI and NCCL tests): the stub under the driver's
# runtime name, libcuda.so.1, in a folder of its own (never on LD_LIBRARY_PATH where a real
# driver is installed: it would shadow it), then the wheels' libraries.
_stub_rt="$_venv/recallseg-stub-runtime"
mkdir -p "$_stub_rt"
ln -sf "$_links/libcuda.so" "$_stub_rt/libcuda.so.1"
RECALLSEG_CUDA_STUB_LD_PATH="$_stub_rt:$CUDA_ROOT/lib:$(ls -d "$_venv"/lib/python3*/site-packages | head -n 1)/nvidia/nccl/lib"
export RECALLSEG_CUDA_STUB_LD_PATH
# cudaforge (candle-kernels' build script) runs nvcc on half the cores unless told otherwise:
# on 2 cores that is one nvcc at a time.
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc 2>/dev/null || echo 2)}"
echo "cuda-env: nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP" >&2
unset _here _venv _py _links _lib _real _cudarc _stub_rt
