#!/bin/sh
# The elbo-vs-PyTorch parity comparison of vae-mlp (see README.md): runs parity.py with
# the venv that holds torch==2.13.0 (override with ELBO_VENV). Arguments go to parity.py.
set -eu
VENV="${ELBO_VENV:-$HOME/.cache/elbo/venv}"
HERE="$(cd "$(dirname "$0")" && pwd)"
if [ ! -x "$VENV/bin/python" ]; then
    echo "no venv at $VENV: python3 -m venv $VENV && $VENV/bin/pip install torch==2.13.0 numpy" >&2
    exit 1
fi
cd "$HERE/../.."
exec "$VENV/bin/python" "$HERE/parity.py" "$@"
