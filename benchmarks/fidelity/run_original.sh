#!/bin/bash
# Run the unchanged released LATTICE or MICRO code on CPU, with torch 1.5's zero_grad semantics.
#   benchmarks/fidelity/run_original.sh CODES_DIR DATASET SEED EPOCHS VERBOSE > LOG
# CODES_DIR: the `codes/` folder of CRIPAC-DIG/LATTICE or CRIPAC-DIG/MICRO; the dataset must lie in
# CODES_DIR/../data/DATASET (the released code reads its features from there whatever --data_path
# says; benchmarks/fidelity/convert.py writes that layout). MICRO needs CODES_DIR/logs to exist.
# One thread by default (the machine is shared; ORIGINAL_THREADS=N for more); unbuffered output so a
# killed run still leaves its log.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shims=${ORIGINAL_ON_CPU:-$here/../../../shared/tools/original-on-cpu}
[ -f "$shims/sitecustomize.py" ] || { echo "no original-on-cpu shims at $shims (set ORIGINAL_ON_CPU)" >&2; exit 2; }
cd "$1"
threads=${ORIGINAL_THREADS:-1}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads ORIGINAL_CPU_COUNT=${ORIGINAL_CPU_COUNT:-10}
export PYTHONPATH=$here/torch15:$shims
exec "${PYTHON:-python}" main.py --data_path ../data/ --dataset "$2" --seed "$3" --epoch "$4" --verbose "$5"
