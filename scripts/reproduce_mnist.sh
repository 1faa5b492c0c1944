#!/usr/bin/env bash
# The paper's MNIST comparison at CPU scale: every method from its recipe (recipes/mnist_<entry>.yaml: the paper's
# small CNN on the bundled real mnist-mini digits, eps 0.3, 4 epochs), 3 seeds, judged by clean, PGD-40 (margin
# loss) and AutoAttack (standard) accuracy, next to each method's measured cost and training time. TRADES is in the
# cost table only (its training + validation would add ~10 min to the 40-minute budget: METHODS=... to add it).
# Writes reports/mnist-mini/ (README.md with the tables and findings, benchmark.png, benchmark.csv, costs.csv);
# the training runs and logs go to output/reproduce_mnist/. About 39 min on 2 CPU cores (robust models dominate the
# validation time: AutoAttack's Square runs its full 5,000 queries on every image it cannot break).
#   SEEDS=0 NUM_SAMPLES=32 bash scripts/reproduce_mnist.sh   # a quicker, noisier version
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-0,1,2}
NUM_SAMPLES=${NUM_SAMPLES:-32}
METHODS=${METHODS:-standard,fast,free,pgd,atcd,atcd_reuse}
WORK=${WORK:-output/reproduce_mnist}
REPORT=${REPORT:-reports/mnist-mini}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
start=$(date +%s)
python scripts/benchmark.py --methods "$METHODS" \
    --cost-methods standard,fast,free,free8,pgd,trades,atcd,atcd_reuse,atcd_reuse:--no-mh --cost-batches 10 --rounds 3 \
    --seeds "$SEEDS" --eps 0.3 --attacks clean,pgd,autoattack --attack-loss margin --attack-steps 40 \
    --num-samples "$NUM_SAMPLES" --out "$WORK"
mkdir -p "$REPORT"
cp "$WORK/benchmark.png" "$WORK/benchmark.csv" "$WORK/costs.csv" "$REPORT/"
{
    cat "$WORK/benchmark.md"
    echo
    echo "Total wall time of scripts/reproduce_mnist.sh (SEEDS=$SEEDS NUM_SAMPLES=$NUM_SAMPLES METHODS=$METHODS):" \
         "$(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s."
} > "$REPORT/README.md"
echo "report: $REPORT/README.md"
