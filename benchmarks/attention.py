"""ReLU linear attention (Sana LiteLA kernel, fp32 accumulation) against softmax attention (torch SDPA)
from 1k to 16k tokens, one run, side by side.

    python benchmarks/attention.py [--heads 8] [--head-dim 32] [--repeats 3]

Prints, per token count, the median time of each kernel, their ratio, and each kernel's time per
1k tokens (constant for a linear-time kernel, growing with N for a quadratic one).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from letstalk_core.layers.linear_attention import relu_linear_attention, softmax_attention


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tokens", default="1024,2048,4096,8192,16384")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, {a.heads} heads x {a.head_dim}, fp32")
    print(f"{'tokens':>7} {'linear ms':>10} {'softmax ms':>11} {'softmax/linear':>15} {'linear ms/1k tok':>17} {'softmax ms/1k tok':>18}")
    for n in (int(x) for x in a.tokens.split(",")):
        q, k, v = (torch.randn(1, a.heads, n, a.head_dim) for _ in range(3))
        with torch.no_grad():
            lin = median_time(lambda: relu_linear_attention(q, k, v), a.repeats)
            soft = median_time(lambda: softmax_attention(q, k, v), a.repeats)
        print(f"{n:>7} {lin * 1e3:>10.2f} {soft * 1e3:>11.2f} {soft / lin:>15.1f} {lin * 1e3 / (n / 1024):>17.3f} {soft * 1e3 / (n / 1024):>18.3f}")


if __name__ == "__main__":
    main()
