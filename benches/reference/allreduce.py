"""The bandwidth of torch.distributed's Gloo all-reduce: one bucket of --mib MiB of f32
summed over the ranks, timed on rank 0. The same measurement as elbo's
`benches/src/bin/allreduce.rs`; run both under torchrun:

    torchrun --nproc-per-node 2 benches/reference/allreduce.py --mib 25
    torchrun --no-python --nproc-per-node 2 target/release/allreduce --mib 25
"""

import argparse
import json
import time
from datetime import timedelta

import torch
import torch.distributed as dist


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=float, default=25.0)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    n = int(args.mib * 1024 * 1024 / 4)
    bucket = torch.ones(n, dtype=torch.float32)
    for _ in range(args.warmup):
        dist.all_reduce(bucket)
    times = []
    for _ in range(args.reps):
        dist.barrier()
        started = time.perf_counter()
        dist.all_reduce(bucket)
        times.append((time.perf_counter() - started) * 1e3)
    if rank == 0:
        mean = sum(times) / len(times)
        print(json.dumps({
            "side": "pytorch", "mib": args.mib, "world": world, "reps": args.reps,
            "ms_mean": mean, "ms_best": min(times),
            "gb_per_s_mean": n * 4 / (mean * 1e-3) / 1e9,
        }))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
