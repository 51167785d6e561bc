#!/bin/bash
# A/B: before = 2a8ca38 (/tmp/before), after = main head; interleaved B A B A.
. /work/venv/bin/activate
set -e
out=/tmp/ab_prec; mkdir -p $out
args_layers="--cells lstm gru -T 100 -B 32 -H 256 --dtype float32 bfloat16 autocast_bfloat16 --modes inference training --engine rnnkernels --no-lb --no-ceilings --repeats 7 --no-progress --no-legend"
args_cells="--cells lstm_cell gru_cell -B 1 -H 256 --dtype float32 bfloat16 --modes inference training --engine rnnkernels --no-lb --no-ceilings --repeats 7 --no-progress --no-legend"
for round in 1 2 3 4 5 6; do
  for side in before after; do
    root=/tmp/before; [ $side = after ] && root=/work/main
    (cd /tmp && PYTHONPATH=$root python -m rnnkernels.bench $args_layers --out $out/layers-$side-$round.jsonl > $out/layers-$side-$round.txt 2>&1)
    (cd /tmp && PYTHONPATH=$root python -m rnnkernels.bench $args_cells --out $out/cells-$side-$round.jsonl > $out/cells-$side-$round.txt 2>&1)
    echo "$side $round done $(date +%T)"
  done
done
