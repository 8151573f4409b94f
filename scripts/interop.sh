#!/usr/bin/env bash
# make interop: build the environments of the NIR consumers that cannot live in .venv, then run the interop
# tests and print the measured table (docs/INTEROP.md).
#
#   .interop/spyx      spyx 1.0.0 (JAX, flax), nir 1.0.8
#   .interop/rockpool  rockpool 3.1.0, nirtorch 2.6, nir 1.0.8, torch (the CPU wheel of constraints.txt)
#   .interop/sinabs    sinabs 3.1.3, which pins nir<=1.0.4 (so it cannot share .venv's nir>=1.0.6)
#
# Each environment holds only the consumer: export/_consumer_run.py runs a NIR file there, and
# surroflos.export.verify compares its spikes with the model's. Set SURROFLOS_INTEROP_DIR to build them elsewhere.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
DIR="${SURROFLOS_INTEROP_DIR:-.interop}"
export SURROFLOS_INTEROP_DIR="$(mkdir -p "$DIR" && cd "$DIR" && pwd)"

build() {  # build NAME PACKAGE...: a venv with exactly these packages (skipped when its stamp is current)
    local name="$1"; shift
    local env="$SURROFLOS_INTEROP_DIR/$name" want="$*"
    if [ -x "$env/bin/python" ] && [ "$(cat "$env/.installed" 2>/dev/null)" = "$want" ]; then
        echo "== $name: $want (already built)"; return
    fi
    echo "== $name: building $env with $want"
    test -x "$env/bin/python" || "$PYTHON" -m venv "$env"
    "$env/bin/python" -m pip install -q -c constraints.txt "$@"
    echo "$want" > "$env/.installed"
}

build spyx spyx==1.0.0 jax jaxlib nir==1.0.8
build rockpool rockpool==3.1.0 nirtorch==2.6 nir==1.0.8 torch
build sinabs sinabs==3.1.3

echo "== interop tests (tests/test_interop.py)"
.venv/bin/python -m pytest -m interop -q -p no:cacheprovider tests/test_interop.py
echo "== the measured table (docs/INTEROP.md)"
.venv/bin/python -m surroflos.export.interop ${INTEROP_RUN:+--run "$INTEROP_RUN"}
