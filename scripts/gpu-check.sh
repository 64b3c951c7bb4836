#!/usr/bin/env bash
# The prepared device check of issue 13 (item 4): on a machine with an NVIDIA GPU, PyTorch and no
# Rust toolchain, runs the GPU parity tests and the training-step benchmark from binaries built
# on a CPU machine (scripts/gpu-bundle.sh), the PyTorch peer on the same GPU in the same call,
# and prints ONE JSON object of figures on stdout (progress on stderr).
#
#   scripts/gpu-check.sh [--bundle DIR] [--reps N] [--only CASES] [--tf32] [--skip-tests]
#                        [--skip-bench] [--skip-peer] [--cpu]
#
#   --bundle DIR   what gpu-bundle.sh built (default gpu-bundle/ of the repository)
#   --reps N       timed steps per figure (default 3 for recallseg, 10 for PyTorch)
#   --only CASES   `xtask bench models --only` filter (default: every case)
#   --tf32         also time PyTorch with TF32 allowed (its cuDNN default)
#   --cpu          rehearsal without a GPU: the tests with RECALLSEG_GPU_TESTS_ON_CPU=1, the
#                  benchmark and the peer on the CPU at a tiny shape; figures mean nothing
#
# Settings of the real check: batch 6, 3x384x768, 19 classes, fp32 (NVIDIA_TF32_OVERRIDE=0 for
# the tests and recallseg's benchmark, TF32 off in PyTorch unless --tf32), Adam lr 1e-3,
# pixel-wise cross-entropy. The tests run with RECALLSEG_REQUIRE_CUDA=1: a test that finds no
# device fails instead of skipping. Peak memory: PyTorch's allocator figures, and for both sides
# the largest `nvidia-smi` memory.used sampled every 100 ms during the run, less the figure before
# it (context included, so comparable between the two processes).
#
# The runtime libraries (cuBLAS, cuBLASLt, cuRAND, NVRTC, cudart, cuDNN for a cudnn build) come
# from PyTorch's nvidia-* wheels: LD_LIBRARY_PATH gets every site-packages/nvidia/*/lib folder.
# The binaries were linked against CUDA 13 (libcublas.so.13, …); `ldd` says which are missing.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="$root/gpu-bundle"
reps=3
peer_reps=10
only=""
tf32=0
cpu=0
run_tests=1
run_bench=1
run_peer=1
while [ $# -gt 0 ]; do
    case "$1" in
        --bundle) bundle="$(cd "$2" && pwd)"; shift 2 ;;
        --reps) reps="$2"; peer_reps="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --tf32) tf32=1; shift ;;
        --cpu) cpu=1; shift ;;
        --skip-tests) run_tests=0; shift ;;
        --skip-bench) run_bench=0; shift ;;
        --skip-peer) run_peer=0; shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

py="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log() { echo "gpu-check: $*" >&2; }

# Runtime libraries of PyTorch's CUDA wheels.
nv_libs="$("$py" -c '
import glob, os
try:
    import nvidia
    dirs = [d for p in nvidia.__path__ for d in sorted(glob.glob(os.path.join(p, "*", "lib")))]
except ImportError:
    dirs = []
print(":".join(dirs))
' 2>/dev/null || true)"
export LD_LIBRARY_PATH="${nv_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if [ "$cpu" = 1 ]; then
    shape=(--batch 2 --height 64 --width 128 --classes 19)
    device=cpu
    reps=1
    peer_reps=1
else
    shape=(--batch 6 --height 384 --width 768 --classes 19)
    device=cuda
fi

# nvidia-smi sampling: `mem_start NAME` … `mem_stop NAME` writes NAME.mem (peak − baseline, MiB).
have_smi=0
command -v nvidia-smi >/dev/null 2>&1 && [ "$cpu" = 0 ] && have_smi=1
mem_start() {
    [ "$have_smi" = 1 ] || return 0
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 > "$work/$1.base" 2>/dev/null
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 100 > "$work/$1.smi" 2>/dev/null &
    echo $! > "$work/$1.pid"
}
mem_stop() {
    [ "$have_smi" = 1 ] || return 0
    kill "$(cat "$work/$1.pid")" 2>/dev/null
    wait "$(cat "$work/$1.pid")" 2>/dev/null
    awk -v base="$(head -n 1 "$work/$1.base")" 'BEGIN { m = base } $1 + 0 > m { m = $1 + 0 } END { print m - base }' \
        "$work/$1.smi" > "$work/$1.mem"
}

# The binaries: bin.tar.xz unpacked (what gpu-bundle.sh makes), or a bin/ folder.
bin="$bundle/bin"
if [ -f "$bundle/bin.tar.xz" ]; then
    tar -C "$work" -xJf "$bundle/bin.tar.xz"
    bin="$work/bin"
fi
# Missing shared libraries of each binary.
for b in losses-gpu models-gpu trainer-gpu xtask; do
    if [ -x "$bin/$b" ]; then
        (ldd "$bin/$b" 2>&1 | awk '/not found/ { print $1 }') > "$work/$b.missing"
    else
        echo "(no-binary:$b)" > "$work/$b.missing"
    fi
done

if [ "$run_tests" = 1 ]; then
    for crate in losses models trainer; do
        exe="$bin/$crate-gpu"
        log "tests: $crate"
        start=$(date +%s.%N)
        if [ "$cpu" = 1 ]; then
            RECALLSEG_GPU_TESTS_ON_CPU=1 timeout 300 "$exe" --test-threads 1 --nocapture > "$work/test-$crate.out" 2>&1
        else
            RECALLSEG_REQUIRE_CUDA=1 NVIDIA_TF32_OVERRIDE=0 timeout 300 "$exe" --test-threads 1 --nocapture \
                > "$work/test-$crate.out" 2>&1
        fi
        echo $? > "$work/test-$crate.rc"
        awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }' > "$work/test-$crate.s"
        tail -n 40 "$work/test-$crate.out" >&2
    done
fi

if [ "$run_bench" = 1 ]; then
    log "recallseg: xtask bench models --device $device ${shape[*]} --reps $reps"
    args=(bench models --json --device "$device" "${shape[@]}" --reps "$reps")
    [ -n "$only" ] && args+=(--only "$only")
    mem_start bench
    NVIDIA_TF32_OVERRIDE=0 timeout 420 "$bin/xtask" "${args[@]}" > "$work/bench.json" 2> "$work/bench.err"
    echo $? > "$work/bench.rc"
    mem_stop bench
    tail -n 20 "$work/bench.err" >&2
fi

if [ "$run_peer" = 1 ]; then
    peer_py="$root/crates/models/benches/torch_gpu_step_bench.py"
    if ls "$bundle"/wheels/*.whl >/dev/null 2>&1; then
        "$py" -m pip install -q --no-deps --no-index --target "$work/pylib" "$bundle"/wheels/*.whl \
            > "$work/pip.out" 2>&1 || log "peer: the bundled wheels did not install: $(tail -n 2 "$work/pip.out")"
    fi
    export PYTHONPATH="$work/pylib${PYTHONPATH:+:$PYTHONPATH}"
    log "PyTorch peer: $device ${shape[*]} --reps $peer_reps"
    mem_start peer
    timeout 300 "$py" "$peer_py" --device "$device" "${shape[@]}" --reps "$peer_reps" \
        > "$work/peer.json" 2> "$work/peer.err"
    echo $? > "$work/peer.rc"
    mem_stop peer
    tail -n 8 "$work/peer.err" >&2
    if [ "$tf32" = 1 ]; then
        timeout 300 "$py" "$peer_py" --device "$device" "${shape[@]}" --reps "$peer_reps" --tf32 \
            --only dense,smp > "$work/peer_tf32.json" 2> "$work/peer_tf32.err"
        echo $? > "$work/peer_tf32.rc"
    fi
fi

# One JSON object of everything above.
"$py" - "$work" "$bundle" "$cpu" <<'PY'
import json, os, re, subprocess, sys

work, bundle, cpu = sys.argv[1], sys.argv[2], sys.argv[3] == "1"


def read(name, default=None):
    p = os.path.join(work, name)
    return open(p).read() if os.path.exists(p) else default


def last_json(text):
    for line in reversed((text or "").strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def smi(query):
    try:
        r = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader", "-i", "0"],
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip() or None
    except Exception:
        return None


out = {"mode": "cpu rehearsal (figures mean nothing)" if cpu else "gpu"}
mf = os.path.join(bundle, "manifest.json")
if os.path.exists(mf):
    m = json.load(open(mf))
    out["bundle"] = {"commit": m.get("commit"), "features": m.get("features"), "size_kib": m.get("size_kib")}
out["machine"] = {"gpu": smi("name"), "driver": smi("driver_version"), "memory_total": smi("memory.total")}
out["missing_libraries"] = {b: (read(f"{b}.missing") or "").split() for b in
                            ["losses-gpu", "models-gpu", "trainer-gpu", "xtask"]}
tests = {}
for crate in ["losses", "models", "trainer"]:
    text = read(f"test-{crate}.out")
    if text is None:
        continue
    m = re.search(r"test result: (\w+)\. (\d+) passed; (\d+) failed", text)
    tests[crate] = {
        "exit": int(read(f"test-{crate}.rc", "-1")),
        "result": m.group(1) if m else "no result",
        "passed": int(m.group(2)) if m else 0,
        "failed": int(m.group(3)) if m else 0,
        "skipped": text.count("skipped: no CUDA device"),
        "seconds": float(read(f"test-{crate}.s", "0") or 0),
        "failures": re.findall(r"panicked at [^\n]*\n([^\n]*)", text)[:5],
    }
if tests:
    out["tests"] = tests
if read("bench.rc") is not None:
    ours = last_json(read("bench.json")) or {}
    out["recallseg"] = {
        "exit": int(read("bench.rc")),
        "figures_ms": ours,
        "steps_per_s": {k[: -len("_train_step_ms")]: 1e3 / v for k, v in ours.items() if k.endswith("_train_step_ms")},
        "peak_memory_mib_nvidia_smi": float(read("bench.mem")) if read("bench.mem") else None,
        "stderr_tail": (read("bench.err") or "").strip().splitlines()[-3:],
    }
if read("peer.rc") is not None:
    peer = last_json(read("peer.json")) or {}
    out["pytorch"] = {
        "exit": int(read("peer.rc")),
        "figures": peer,
        "peak_memory_mib_nvidia_smi": float(read("peer.mem")) if read("peer.mem") else None,
        "stderr_tail": (read("peer.err") or "").strip().splitlines()[-3:],
    }
    if read("peer_tf32.rc") is not None:
        out["pytorch_tf32"] = last_json(read("peer_tf32.json"))
    # Our step time over PyTorch's, per architecture (≤ 1.0 is the goal of issue 13).
    pairs = {
        "dense_deeplabv3plus_r18_os16": ("deeplabv3plus_r18_os16_train_step_ms", "dense"),
        "smp_deeplabv3plus_r18_os16": ("deeplabv3plus_r18_os16_separable_train_step_ms", "smp_real"),
        "smp_layout_plain_torch": ("deeplabv3plus_r18_os16_separable_train_step_ms", "smp"),
        "deeplabv3_r18_os8": ("deeplabv3_r18_os8_train_step_ms", "dlv3_os8"),
    }
    ours = out.get("recallseg", {}).get("figures_ms", {})
    out["step_time_ratio_recallseg_over_pytorch"] = {
        k: ours[a] / peer[b]["train_step_ms"]
        for k, (a, b) in pairs.items()
        if a in ours and isinstance(peer.get(b), dict) and "train_step_ms" in peer[b]
    }
print(json.dumps(out))
PY
