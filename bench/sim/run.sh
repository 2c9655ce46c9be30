#!/usr/bin/env bash
# Scale measurements of `sortition sim` (the same simulator through its example binary, built
# in release): cost as nodes and requests grow, and where the time goes.
# Usage: bench/sim/run.sh [grid|scale|beacons|sweep]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sortition/target}
cargo build --release -q -p sortition-sim --example sim
SIM="$CARGO_TARGET_DIR/release/examples/sim"
row() {
  python3 -c '
import json, sys
d = json.load(sys.stdin); t = d["timings_s"]
print("| {nodes} | {requests} | {blocks} | {txs} | {audits} | {disputes} | {total:.2f} | {kv:.2f} | {sv:.2f} | {lt:.2f} | {le:.2f} | {sm:.2f} | {ag:.2f} | {root:.2f} | {tps:.0f} | {rps:.0f} |".format(
  nodes=d["nodes"], requests=d["requests"], blocks=d["blocks"], txs=d["txs"], audits=d["audits"],
  disputes=d["disputes"], total=t["total"], kv=t["keys"], sv=t["sign_and_verify"], lt=t["ledger_txs"],
  le=t["ledger_end_block"], sm=t["serve_and_merkle"], ag=t["agents"], root=t["state_root"],
  tps=d["ledger_tx_per_s"], rps=d["requests_per_s"]))'
}
case "${1:-grid}" in
  grid)
    echo "| nodes | requests | blocks | txs | audits | disputes | total s | keys | sign+verify | ledger txs | ledger end-block | serve+merkle | agents | state root | ledger tx/s | requests/s |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for n in 1000 10000 100000; do
      for r in 100000 1000000 10000000; do
        "$SIM" --nodes "$n" --requests "$r" --seed 1 --json --quiet | row
      done
    done ;;
  scale)
    /usr/bin/time -f "wall %e s, user %U s, sys %S s, max RSS %M KB" \
      "$SIM" --nodes 100000 --requests 10000000 --seed 1 --json --quiet --out bench/sim/scale > bench/sim/scale.json
    python3 -c 'import json; d=json.load(open("bench/sim/scale.json")); print(json.dumps({k: d[k] for k in ["detection_measured","detection_theory","honest_slashes","wrongful_slashes","all_within_10pct","all_theory_in_ci","state_root","timings_s","ledger_tx_per_s","requests_per_s"]}, indent=1))' ;;
  beacons)
    for b in threshold predictable; do
      "$SIM" --nodes 10000 --requests 2000000 --seed 1 --q 0.01 --beacon "$b" --quiet --out "bench/sim/beacon-$b"
    done ;;
  sweep)
    "$SIM" --sweep --nodes 2000 --requests 400000 --seed 1 --quiet --out bench/sim/sweep ;;
esac
