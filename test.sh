#!/usr/bin/env bash
# Runs every test of deform-conv. Installs what it needs on a fresh machine:
#   - Rust crates (cargo fetches them),
#   - a Python venv at .venv with requirements-dev.txt (reused when already complete),
#   - the deform_conv Python package, built by maturin into that venv,
#   - an abi3 manylinux2014 wheel (zig from PyPI's ziglang links it against glibc 2.17; auditwheel
#     checks the policy) and an sdist (dist/), the wheel smoke-tested in a fresh venv without Rust,
#   - a venv at .venv-ms with MindSpore 2.10 (requirements-mindspore.txt) and that wheel.
# Large wheels (torch, triton) resume interrupted downloads (--resume-retries).
# Prints cargo's and pytest's summaries; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")"

echo "== rust: format, lints, tests"
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings
cargo clippy -p deform-conv-cli --all-targets --quiet -- -D warnings
cargo test --workspace --all-features --quiet 2>&1 | grep -vE '^\s*$' | grep -vE '^running [0-9]+ tests?$'
test "${PIPESTATUS[0]}" -eq 0

echo "== rust: miri (the scalar engine on small problems, undefined behaviour checked)"
if command -v rustup >/dev/null && rustup toolchain list | grep -q '^nightly' &&
    rustup component add --toolchain nightly miri rust-src >/dev/null 2>&1; then
    (cd crates/deform-conv && DEFORM_CONV_ISA=scalar cargo +nightly miri test --quiet --test miri 2>&1 |
        grep -E 'test result|error|Undefined' ; test "${PIPESTATUS[0]}" -eq 0)
else
    echo "miri: skipped (no nightly toolchain with miri here: rustup toolchain install nightly --component miri)"
fi

echo "== python: venv"
PY=${PYTHON:-python3}
stamp=".venv/.deform-conv-complete"
want=$(sha256sum requirements-dev.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet --retries 10 --resume-retries 20 -r requirements-dev.txt
    echo "$want" > "$stamp"
else
    echo "reusing complete .venv"
fi

echo "== python: build and install deform_conv"
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/python -m pip install --quiet --no-deps --force-reinstall --no-build-isolation . 2>&1 | tail -5

echo "== python: wheel and sdist, installed without Rust"
rm -rf dist
# Linked by zig against glibc 2.17 (manylinux2014): installs wherever torch's own wheels do.
maturin build --release --quiet --zig --compatibility manylinux2014 --out dist 2>&1 | grep -v "^\s*$" | tail -2
maturin sdist --out dist 2>&1 | tail -1
policy=$(auditwheel show dist/deform_conv-*-abi3-*.whl 2>&1 | tr '\n' ' ' | grep -o 'consistent with the following platform tag: "[^"]*"' || true)
echo "auditwheel: ${policy:-no policy found}"
case "$policy" in
    *manylinux_2_17_x86_64*|*manylinux_2_17_aarch64*) ;;
    *) echo "the wheel is not manylinux_2_17 (manylinux2014)"; exit 1 ;;
esac
wheel_env=$(mktemp -d)
"$PY" -m venv "$wheel_env/venv"
# No cargo, rustc or maturin on PATH: only the fresh venv and the system.
env PATH="$wheel_env/venv/bin:/usr/local/bin:/usr/bin:/bin" sh -c '
    pip install --quiet dist/deform_conv-*-abi3-*.whl &&
    cd "$0" && python "$1"' "$wheel_env" "$PWD/tests/wheel/smoke.py"
rm -rf "$wheel_env"

echo "== python: tests"
.venv/bin/python -m pytest -q -p no:warnings tests/python

echo "== mindspore: venv (MindSpore 2.10 wants numpy < 2: a venv of its own) and tests"
ms_stamp=".venv-ms/.deform-conv-complete"
ms_want=$(sha256sum requirements-mindspore.txt | cut -d' ' -f1)
if [ ! -f "$ms_stamp" ] || [ "$(cat "$ms_stamp")" != "$ms_want" ]; then
    [ -x .venv-ms/bin/python ] || "$PY" -m venv .venv-ms
    .venv-ms/bin/python -m pip install --quiet --upgrade pip
    .venv-ms/bin/python -m pip install --quiet --retries 10 --resume-retries 20 -r requirements-mindspore.txt
    echo "$ms_want" > "$ms_stamp"
else
    echo "reusing complete .venv-ms"
fi
.venv-ms/bin/python -m pip install --quiet --no-deps --force-reinstall dist/deform_conv-*-abi3-*.whl
.venv-ms/bin/python -m pytest -q -p no:warnings tests/mindspore 2>&1 | grep -v '^\[WARNING\]'
test "${PIPESTATUS[0]}" -eq 0
