#!/usr/bin/env bash
# Builds, on a CPU machine, everything scripts/gpu-check.sh runs on a GPU machine without Rust
# (issue 13, item 4), into one folder (default gpu-bundle/, ignored by git; it must stay under
# 64 MiB, the most a device call carries):
#
#   bin.tar.xz     bin/losses-gpu, bin/models-gpu, bin/trainer-gpu: the GPU parity tests
#                  (crates/*/tests/gpu.rs), and bin/xtask (`xtask bench models --device cuda`),
#                  release builds, stripped; each holds candle's PTX (about 50 MiB a binary
#                  uncompressed, 6-8 MiB compressed)
#   wheels/*.whl                                     segmentation-models-pytorch 0.6.0 and timm
#                                                    (no dependencies) for the smp peer, unless
#                                                    --no-wheels
#   manifest.json                                    commit, features, sizes
#
#   scripts/gpu-bundle.sh [--out DIR] [--features cuda|cudnn|cpu] [--no-wheels]
#
# `--features cpu` builds the same binaries without CUDA, for rehearsing gpu-check.sh --cpu on a
# machine without a GPU (no CUDA environment needed then).
#
# Needs the CUDA build environment of scripts/cuda-env.sh (nvcc 13.0 from NVIDIA's wheels, the
# link-time driver stub); RECALLSEG_CUDA_ENV names another copy of it. Set CARGO_TARGET_DIR to keep
# the CUDA build apart from the CPU one (the builds differ only by features, and sharing a target
# folder makes them rebuild each other). Then, on the GPU machine:
#
#   scripts/gpu-check.sh --bundle gpu-bundle
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/gpu-bundle"
features=cuda
wheels=1
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
        --features) features="$2"; shift 2 ;;
        --no-wheels) wheels=0; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "gpu-bundle: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$features" in
    cuda|cudnn)
        test_features=(--features "recallseg-trainer/$features")
        xtask_features=(--features "$features")
        env_script="${RECALLSEG_CUDA_ENV:-$root/scripts/cuda-env.sh}"
        if [ ! -f "$env_script" ]; then
            echo "gpu-bundle: no CUDA build environment at $env_script (set RECALLSEG_CUDA_ENV)" >&2
            exit 1
        fi
        # shellcheck source=/dev/null
        source "$env_script"
        ;;
    cpu)
        test_features=()
        xtask_features=()
        ;;
    *) echo "gpu-bundle: --features must be cuda, cudnn or cpu, got $features" >&2; exit 2 ;;
esac
cd "$root"

rm -rf "$out/bin" "$out/bin.tar.xz" "$out/wheels" "$out/manifest.json"
mkdir -p "$out/bin"

# Paths of the executables a `cargo … --message-format=json` build produced, as `name path` lines.
executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["package_id"], m["executable"])
'
}

echo "gpu-bundle: building the GPU tests (--release, ${test_features[*]:-no features})" >&2
tests="$(nice -n 19 cargo test --release --no-run "${test_features[@]}" \
    -p recallseg-losses -p recallseg-models -p recallseg-trainer --test gpu \
    --message-format=json | executables)"
for crate in losses models trainer; do
    exe="$(printf '%s\n' "$tests" | awk -v c="recallseg-$crate" '$1 == "gpu" && index($2, c) { print $3 }' | head -n 1)"
    if [ -z "$exe" ]; then
        echo "gpu-bundle: cargo did not report the test binary of recallseg-$crate" >&2
        exit 1
    fi
    cp "$exe" "$out/bin/$crate-gpu"
done

echo "gpu-bundle: building xtask (--release, ${xtask_features[*]:-no features})" >&2
exe="$(nice -n 19 cargo build --release -p xtask "${xtask_features[@]}" --message-format=json |
    executables | awk '$1 == "xtask" { print $3 }' | head -n 1)"
if [ -z "$exe" ]; then
    echo "gpu-bundle: cargo did not report the xtask binary" >&2
    exit 1
fi
cp "$exe" "$out/bin/xtask"
strip "$out"/bin/*
echo "gpu-bundle: compressing the binaries" >&2
XZ_OPT="${XZ_OPT:--6 -T0}" tar -C "$out" -cJf "$out/bin.tar.xz" bin
rm -rf "$out/bin"

if [ "$wheels" = 1 ]; then
    mkdir -p "$out/wheels"
    pip="${PIP:-$root/.venv-peer/bin/pip}"
    [ -x "$pip" ] || pip="python3 -m pip"
    echo "gpu-bundle: downloading the smp and timm wheels" >&2
    $pip download -q --no-deps --only-binary=:all: -d "$out/wheels" \
        "segmentation-models-pytorch==0.6.0" "timm==1.0.31"
fi

size_kib="$(du -sk "$out" | cut -f1)"
python3 - "$out" "$features" "$size_kib" <<'PY'
import json, os, subprocess, sys
out, features, size_kib = sys.argv[1], sys.argv[2], int(sys.argv[3])
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip())
files = {}
for d, _, names in os.walk(out):
    for n in names:
        p = os.path.join(d, n)
        files[os.path.relpath(p, out)] = os.path.getsize(p)
json.dump({"commit": commit, "dirty": dirty, "features": features, "cuda_compute_cap": os.environ.get("CUDA_COMPUTE_CAP"),
           "size_kib": size_kib, "files": files}, open(os.path.join(out, "manifest.json"), "w"), indent=1)
PY
echo "gpu-bundle: $out, $((size_kib / 1024)) MiB" >&2
if [ "$size_kib" -gt $((64 * 1024)) ]; then
    echo "gpu-bundle: over the 64 MiB a device call carries; try --no-wheels" >&2
    exit 1
fi
