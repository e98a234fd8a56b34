#!/usr/bin/env bash
# The ARM checks of CI: cross-builds the aarch64 Linux target, runs the kernel property tests
# and saved int8 models under qemu-user on three CPU models (every NEON tier: i8mm + dotprod,
# dotprod alone, neither), compares the models' outputs byte for byte with x86's scalar
# reference (MobileNetV2's with aarch64's scalar tier, see below), lints the aarch64 build, and
# checks that the library builds for Apple Silicon.
#
# Needs: rustup, `apt-get install gcc-aarch64-linux-gnu qemu-user clang` (Debian/Ubuntu), and for
# ResNet18 and MobileNetV2 the exported models (`pytest` exports them; else PyTorch, see
# tests/python/conftest.py).
# Usage: scripts/aarch64.sh            (from anywhere; caches builds under ~/.cache)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
target=aarch64-unknown-linux-gnu
cache=$HOME/.cache/jarvis-performance
host_target_dir=${CARGO_TARGET_DIR:-$cache/target}
arm_target_dir=${JARVIS_ARM_TARGET_DIR:-$cache/target-aarch64}
sysroot=/usr/aarch64-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export RUST_BACKTRACE=0
started=$SECONDS

for tool in qemu-aarch64 aarch64-linux-gnu-gcc clang; do
    command -v "$tool" >/dev/null || {
        echo "aarch64.sh: $tool missing: apt-get install -y gcc-aarch64-linux-gnu qemu-user clang" >&2
        exit 1
    }
done
rustup target add "$target" aarch64-apple-darwin >/dev/null 2>&1 || true
step() { echo "== $* ($((SECONDS - started)) s)"; }

step "macOS (Apple Silicon): cargo check, without the C allocator (its build needs the SDK)"
# tract-linalg assembles its ARM kernels at build time: clang assembles Mach-O without the SDK.
CC_aarch64_apple_darwin=clang CARGO_TARGET_DIR=$cache/target-darwin cargo check --quiet \
    --target aarch64-apple-darwin --lib --no-default-features

step "aarch64 Linux: clippy and release build"
export CARGO_TARGET_DIR=$arm_target_dir
cargo clippy --quiet --release --target "$target" --all-targets --features bench-internals -- -D warnings
# One build for the lib's tests and the CLI (`--test cli` builds `jarvis-perf` with the same
# dependency features, so tract is compiled once, not once per profile of features).
tests=$(cargo test --quiet --release --target "$target" --lib --test cli --no-run \
    --message-format=json | python -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    lib_tests = m.get("reason") == "compiler-artifact" and m["target"]["name"] == "jarvis_performance"
    if lib_tests and m["profile"]["test"] and m.get("executable"):
        print(m["executable"])')
arm_cli=$arm_target_dir/$target/release/jarvis-perf
unset CARGO_TARGET_DIR

# qemu's CPU models: `max` has FEAT_DotProd and FEAT_I8MM, Cortex-A76 DotProd alone,
# Cortex-A72 neither; the tests assert that detection sees exactly these tiers.
cpus=(max cortex-a76 cortex-a72)
declare -A tiers=(
    [max]="neon_i8mm neon_dotprod neon scalar"
    [cortex-a76]="neon_dotprod neon scalar"
    [cortex-a72]="neon scalar"
)
emulate() { # CPU, then the command
    local cpu=$1
    shift
    qemu-aarch64 -L "$sysroot" -cpu "$cpu" "$@"
}

for cpu in "${cpus[@]}"; do
    step "kernel property tests under qemu -cpu $cpu (tiers: ${tiers[$cpu]})"
    if ! log=$(JARVIS_PERF_EXPECT_TIERS="${tiers[$cpu]}" emulate "$cpu" "$tests" kernels:: \
        --test-threads 2 2>&1); then
        echo "$log" >&2
        echo "aarch64.sh: kernel tests failed under -cpu $cpu" >&2
        exit 1
    fi
    grep "^test result" <<<"$log"
done

step "saved int8 models: x86 scalar reference, then every tier under qemu"
CARGO_TARGET_DIR=$host_target_dir cargo test --quiet --release --test cli --no-run
host_cli=$host_target_dir/release/jarvis-perf
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
declare -A sources=([digits_cnn]=models/digits_cnn.onnx)
# ResNet18 (dense convolutions) and MobileNetV2 (depthwise layers, the Linear classifier) as
# pytest exported them (any torch version), else exported now.
for model in resnet18 mobilenet_v2; do
    sources[$model]=$(ls "${JARVIS_MODEL_CACHE:-$cache/models}"/$model-3x224x224-torch*.onnx \
        2>/dev/null | head -n1)
    if [[ -z ${sources[$model]} ]]; then
        sources[$model]=$(python -c "from jarvis_performance.export import cached_export as e
print(e('$model', input_shape=(1, 3, 224, 224)))")
    fi
done
python - "$work" <<'EOF'
import sys
import numpy as np

work = sys.argv[1]
rng = np.random.default_rng(25)
for model in ("resnet18", "mobilenet_v2"):
    np.save(f"{work}/{model}_calib.npy", rng.standard_normal((16, 3, 224, 224), dtype=np.float32))
    np.save(f"{work}/{model}_input.npy", rng.standard_normal((1, 3, 224, 224), dtype=np.float32))
EOF
cp models/digits_calib.npy "$work/digits_cnn_calib.npy"
cp models/digits_sample.npy "$work/digits_cnn_input.npy"
# MobileNetV2 (random weights, outputs ~1e-9) differs between x86 and aarch64 even on the scalar
# tier, where none of the SIMD kernels run: the float ops tract runs itself round differently per
# architecture and the near-zero outputs magnify it. So its NEON tiers are compared byte for
# byte with the aarch64 scalar tier; the difference from x86 is printed.
declare -A reference=(
    [digits_cnn]="x86 scalar" [resnet18]="x86 scalar" [mobilenet_v2]="aarch64 scalar"
)
arm_run() { # CPU, tier (`best`: no override, the detection picks on this CPU model), model, output
    local choice=()
    [[ $2 == best ]] || choice=(JARVIS_PERF_ISA="$2")
    env "${choice[@]}" JARVIS_PERF_THREADS=2 qemu-aarch64 -L "$sysroot" -cpu "$1" "$arm_cli" run \
        "$work/$3.int8.onnx" --input "$work/${3}_input.npy" -o "$4" >/dev/null
}
for model in digits_cnn resnet18 mobilenet_v2; do
    "$host_cli" quantize "${sources[$model]}" --calib "$work/${model}_calib.npy" \
        -o "$work/$model.int8.onnx" >/dev/null
    expected=$work/$model.x86_scalar.npy
    JARVIS_PERF_ISA=scalar "$host_cli" run "$work/$model.int8.onnx" \
        --input "$work/${model}_input.npy" -o "$expected" >/dev/null
    if [[ ${reference[$model]} == "aarch64 scalar" ]]; then
        arm_run max scalar "$model" "$work/$model.arm_scalar.npy"
        python - "$expected" "$work/$model.arm_scalar.npy" "$model" <<'EOF'
import sys
import numpy as np

x86, arm = (np.load(path).astype(np.float64) for path in sys.argv[1:3])
difference = np.abs(x86 - arm).max() / max(np.abs(x86).max(), 1e-30)
largest = np.abs(x86).max()
print(f"{sys.argv[3]} int8, aarch64 scalar against x86 scalar: differs by {difference:.1e}", end="")
print(f" of the largest output ({largest:.1e})")
EOF
        expected=$work/$model.arm_scalar.npy
    fi
    runs=("max neon_i8mm" "max neon_dotprod" "max neon" "cortex-a76 best" "cortex-a72 best")
    for run in "${runs[@]}"; do
        read -r cpu isa <<<"$run"
        out=$work/$model.$cpu.$isa.npy
        arm_run "$cpu" "$isa" "$model" "$out"
        if cmp -s "$out" "$expected"; then
            echo "$model int8, -cpu $cpu, $isa: same bytes as ${reference[$model]}"
        else
            echo "aarch64.sh: $model int8 on -cpu $cpu ($isa) differs from ${reference[$model]}" >&2
            exit 1
        fi
    done
done
step "aarch64 checks passed"
