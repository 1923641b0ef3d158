"""Multi-head attention, forward + backward: helpers vs nn.MultiheadAttention, same run.

Batch 8, sequence 256, d_model 256, 8 heads, CPU, float32. Prints the median time of each
and the ratio helpers / PyTorch (goal: <= 1.2 on the fast path, i.e. without weights).
"""

from __future__ import annotations

import statistics
import time

import torch

from helpers.attention import MultiHeadAttention, torch_multihead_like

BATCH, SEQ, D_MODEL, HEADS, REPEATS, GOAL = 8, 256, 256, 8, 30, 1.2


def median_seconds(step, repeats: int = REPEATS) -> float:
    """Median wall time of ``step()`` after three warm-up calls."""
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    ours = MultiHeadAttention(D_MODEL, HEADS)
    ref = torch_multihead_like(ours)
    x = torch.randn(BATCH, SEQ, D_MODEL, requires_grad=True)

    def run_ours(need_weights: bool):
        def step():
            out, _ = ours(x, x, x, need_weights=need_weights)
            out.sum().backward()
        return step

    def run_ref(need_weights: bool):
        def step():
            out, _ = ref(x, x, x, need_weights=need_weights, average_attn_weights=False)
            out.sum().backward()
        return step

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {BATCH}, "
          f"seq {SEQ}, d_model {D_MODEL}, heads {HEADS}; forward + backward, median of {REPEATS}")
    for need_weights in (False, True):
        t_ours = median_seconds(run_ours(need_weights))
        t_ref = median_seconds(run_ref(need_weights))
        label = "with weights   " if need_weights else "without weights"
        print(f"{label}: helpers {t_ours * 1e3:7.2f} ms | nn.MultiheadAttention "
              f"{t_ref * 1e3:7.2f} ms | ratio {t_ours / t_ref:.2f}"
              + ("" if need_weights else f" (goal <= {GOAL}: "
                 f"{'met' if t_ours / t_ref <= GOAL else 'NOT met'})"))


if __name__ == "__main__":
    main()
