# Sourced by the run_*.sh scripts: one core, single-threaded BLAS/XLA, the project's venv.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMEXPR_NUM_THREADS=1
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false"  # single-threaded Eigen in XLA:CPU
PY=${PY:-.venv/bin/python}
PIN="taskset -c 1"
