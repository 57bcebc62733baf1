"""The peer of ann_bench: hnswlib on the same vectors, one thread.

Reads base.f32 / queries.f32 / truth.f32 written by ann_bench (raw
little-endian f32, `dim` columns; truth holds the exact top-10 ids), builds
an inner-product HNSW index with the same M and ef_construction as ours, and
prints recall@10, queries/s, p50/p99 per ef: queries/s from one batched
call on one thread (no Python overhead per query), latency percentiles from
single-query calls.

    python3 hnswlib_peer.py DIR DIM [M] [EF_CONSTRUCTION]
"""
import sys
import time

import hnswlib
import numpy as np

K = 10


def main():
    directory, dim = sys.argv[1], int(sys.argv[2])
    m = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    ef_construction = int(sys.argv[4]) if len(sys.argv) > 4 else 128
    efs = [int(e) for e in (sys.argv[5] if len(sys.argv) > 5 else "16,24,32,48,64,96,128").split(",")]
    base = np.fromfile(f"{directory}/base.f32", dtype="<f4").reshape(-1, dim)
    queries = np.fromfile(f"{directory}/queries.f32", dtype="<f4").reshape(-1, dim)
    truth = np.fromfile(f"{directory}/truth.f32", dtype="<f4").reshape(-1, K).astype(np.int64)

    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=len(base), M=m, ef_construction=ef_construction, random_seed=7)
    index.set_num_threads(1)
    started = time.perf_counter()
    index.add_items(base, np.arange(len(base)))
    build = time.perf_counter() - started
    print(f"hnswlib {len(base)} x {dim}: build {build:.1f} s ({len(base) / build:.0f} inserts/s), M={m} ef_construction={ef_construction}")
    print("| ef | recall@10 | queries/s | p50 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|")
    for ef in efs:
        index.set_ef(ef)
        index.knn_query(queries[:100], k=K)  # warm-up
        started = time.perf_counter()
        labels, _ = index.knn_query(queries, k=K)
        elapsed = time.perf_counter() - started
        found = sum(len(set(labels[i]) & set(truth[i])) for i in range(len(queries)))
        latencies = []
        for q in queries:
            t = time.perf_counter()
            index.knn_query(q, k=K)
            latencies.append(time.perf_counter() - t)
        latencies.sort()
        p50 = latencies[len(latencies) // 2] * 1e3
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3
        print(f"| {ef} | {found / (len(queries) * K):.3f} | {len(queries) / elapsed:.0f} | {p50:.3f} | {p99:.3f} |")


if __name__ == "__main__":
    main()
