"""vosedge benchmarks: DAVIS J&F (vos-eval), speed/latency/memory of memory policies (vos-bench)."""
