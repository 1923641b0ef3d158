"""bfloat16 autocast against float32 on this CPU: why the `bf16` switches check the hardware.

A linear layer (batch 256, 512 -> 2048), a GRU (batch 64, 128 steps, width 256) and a
transformer encoder layer (batch 16, sequence 128, d_model 192), forward + backward, 2 threads.
Prints the median time of each in float32 and under bfloat16 autocast, their ratio, and what
``helpers.training.bf16_is_fast`` says: on a CPU with AVX-512 BF16 the ratio is below 1, on an
AVX2-only CPU it is many times above.
"""

from __future__ import annotations

import torch
from attention import median_seconds  # bench/attention.py (this folder is on sys.path)
from torch import nn

from helpers.training import autocast, bf16_is_fast

REPEATS = 5  # bfloat16 steps take seconds on an AVX2-only CPU


def forward_backward(module: nn.Module, x: torch.Tensor, dtype: torch.dtype | None):
    def step():
        with autocast("cpu", dtype):
            out = module(x)
        out = out[0] if isinstance(out, tuple) else out
        out.float().sum().backward()
    return step


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    cases = {
        "linear 512->2048, batch 256": (nn.Linear(512, 2048), torch.randn(256, 512)),
        "GRU width 256, 64 x 128 steps": (nn.GRU(256, 256, batch_first=True),
                                          torch.randn(64, 128, 256)),
        "encoder layer d=192, 16 x 128": (
            nn.TransformerEncoderLayer(192, 3, 768, batch_first=True, dropout=0.0),
            torch.randn(16, 128, 192)),
    }
    print(f"torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, bf16_is_fast: {bf16_is_fast('cpu')}")
    for name, (module, x) in cases.items():
        x.requires_grad_(True)
        fp32 = median_seconds(forward_backward(module, x, None), REPEATS)
        bf16 = median_seconds(forward_backward(module, x, torch.bfloat16), REPEATS)
        print(f"{name}: float32 {fp32 * 1e3:.1f} ms, bfloat16 autocast {bf16 * 1e3:.1f} ms, "
              f"ratio {bf16 / fp32:.2f}x")


if __name__ == "__main__":
    main()
