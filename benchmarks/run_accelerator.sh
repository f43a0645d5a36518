#!/usr/bin/env bash
# otreg vs OTT-JAX on one accelerator: benchmarks/accelerator.py in its full mode (under 8 minutes;
# extra arguments go to it, e.g. --budget 300, --rows 1 2, or --small).
# On a CPU host it runs pinned to one core (PIN_CORE, default 1), single-threaded (env.sh); on a
# GPU or TPU host nothing is pinned. The backend is JAX's default, or OTREG_BENCH_BACKEND=cpu|gpu|tpu
# to say it without asking JAX. PY picks the Python (default: .venv's, else python3); otreg is
# imported from this checkout when that Python does not have it installed.
#
# Missing wheels (a host with no internet, e.g. this project's nvidia-h200 device machine, whose
# python3 has jax with CUDA, optax and lineax but not ott-jax or its dependency jaxopt): on a
# machine where pip works, in the repository root,
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl ott-jax==0.6.0 jaxopt==0.8.5
# (both are pure-Python py3-none-any wheels), and carry .whl to the host (the device tool's
# `carry: [".whl"]`). When .whl/*.whl exist and the Python lacks ott, this script installs them
# into /tmp/site (no index, no dependencies) and puts that on PYTHONPATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if compgen -G ".whl/*.whl" >/dev/null && ! "$PY" -c "import ott" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
backend=${OTREG_BENCH_BACKEND:-$("$PY" -c "import jax; print(jax.default_backend())" 2>/dev/null)}
echo "# run_accelerator.sh: backend $backend, python $PY"
if [ "$backend" = cpu ]; then
  export PY
  source benchmarks/env.sh  # one core, single-threaded BLAS/XLA
  taskset -c "${PIN_CORE:-1}" "$PY" benchmarks/accelerator.py "$@"
else
  "$PY" benchmarks/accelerator.py "$@"
fi
