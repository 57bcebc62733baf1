#!/usr/bin/env bash
# The knowledge benchmark of BENCHMARKS.md, in one run on one thread:
# our HNSW index (usearch, i8 graph + f32 re-rank) on a fixed-seed clustered
# collection, the exact f32 scan, hnswlib (the peer) on the same vectors,
# and the original BSM's Jaccard scan against the knowledge service.
#
#   host/knowledge/benches/ann.sh            (100,000 x 384)
#   N=20000 DIM=96 host/knowledge/benches/ann.sh
#
# Needs python3 with hnswlib and numpy (`pip install hnswlib numpy`).
set -euo pipefail
cd "$(dirname "$0")/../../.."
N=${N:-100000}
DIM=${DIM:-384}
EFS=${EFS:-16,24,32,48,64,96}
python3 -c "import hnswlib, numpy" 2>/dev/null || pip install -q hnswlib numpy
cargo build --release -q -p bsm-knowledge --example ann_bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "## ours: usearch $(grep -A1 'name = "usearch"' Cargo.lock | sed -n 2p | cut -d'"' -f2)"
EFS=$EFS taskset -c 0 ./target/release/examples/ann_bench "$N" "$DIM" "$work"
echo
echo "## peer: hnswlib $(python3 -c 'import importlib.metadata as m; print(m.version("hnswlib"))')"
taskset -c 0 python3 host/knowledge/benches/hnswlib_peer.py "$work" "$DIM" 16 128 "$EFS"
