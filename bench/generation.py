"""Batched generation: helpers.llm_generation.generate vs Hugging Face ``generate``, same run.

SmolLM2-135M-Instruct (the packaged GGUF, float32, CPU) on the few-shot chain-of-thought
prompts of the reasoning notebook: (a) greedy, 16 prompts, 48 new tokens; (b) sampling,
4 prompts x 5 samples, top-p 0.95, 48 new tokens. Both decoders stop at the end-of-text token.
Prints the median wall time of each, generated tokens per second, and the ratio
helpers / HF (below 1: faster). Our generator reads the prompt prefix shared by all prompts
once and the prompt of several samples once; HF reads every row's whole prompt.
"""

from __future__ import annotations

import statistics
import time

import torch

from helpers import llm_generation, reasoning
from helpers.causal_lm import load_causal_lm

NEW_TOKENS, REPEATS = 48, 3
SYSTEM = ("You are a careful math tutor. Solve the problem step by step, one short step per "
          "line, then write the final answer as \\boxed{answer}.")
EXAMPLES = [("Lily has 5 pens and buys 3 more. How many pens does she have now?",
             "She starts with 5 pens.\nShe buys 3 more, so 5 + 3 = 8.\nThe answer is \\boxed{8}.")]


def median_seconds(step) -> tuple[float, int]:
    """Median wall time of ``step()`` (which returns its generated-token count) after one
    warm-up call, and that count."""
    tokens = step()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), tokens


def hf_generate(model, tokenizer, prompts: list[str], samples: int, sample: bool) -> int:
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    extra = {"do_sample": True, "top_p": 0.95, "temperature": 0.7} if sample else {
        "do_sample": False}
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=NEW_TOKENS, num_return_sequences=samples,
                             pad_token_id=tokenizer.pad_token_id, top_k=None, **extra)
    new = out[:, enc["input_ids"].shape[1]:]
    return int((new != tokenizer.pad_token_id).sum())


def ours_generate(model, tokenizer, prompts: list[str], samples: int, sample: bool) -> int:
    outs = llm_generation.generate(model, tokenizer, prompts, max_new_tokens=NEW_TOKENS,
                                   num_samples=samples, temperature=0.7 if sample else 0.0,
                                   top_p=0.95 if sample else None, batch_size=16)
    return sum(c.n_tokens for pool in outs for c in pool)


def main() -> None:
    torch.manual_seed(0)
    model, tokenizer, source = load_causal_lm("SmolLM2-135M-Instruct", "small")
    problems = reasoning.arithmetic_problems(4, seed=0)
    prompts = [llm_generation.chat_prompt(tokenizer, p.question, SYSTEM, EXAMPLES)
               for p in problems]
    print(f"SmolLM2-135M-Instruct ({source}), {torch.get_num_threads()} threads, "
          f"{NEW_TOKENS} new tokens, median of {REPEATS}")
    for name, rows, samples, sample in [("greedy, 16 prompts", prompts[:16], 1, False),
                                        ("sampling, 4 prompts x 5", prompts[:4], 5, True)]:
        ours, ours_tokens = median_seconds(
            lambda: ours_generate(model, tokenizer, rows, samples, sample))  # noqa: B023
        ref, ref_tokens = median_seconds(
            lambda: hf_generate(model, tokenizer, rows, samples, sample))  # noqa: B023
        print(f"{name:24s} helpers {ours:6.2f} s ({ours_tokens / ours:5.1f} tok/s)  "
              f"HF generate {ref:6.2f} s ({ref_tokens / ref:5.1f} tok/s)  "
              f"ratio helpers/HF {ours / ref:.2f}")


if __name__ == "__main__":
    main()
