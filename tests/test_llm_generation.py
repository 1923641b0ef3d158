"""helpers.llm_generation: the batched, KV-cached generator against HF ``generate``, its
sampling, newline stops and the shortlist sampler."""

import pytest
import torch

from helpers import llm_generation as G

PROMPTS = ["Tom has 3 apples", "Each box holds six pens and more boxes hold", "Solve"]


def test_greedy_generation_equals_hf_generate_with_left_padding(tiny_llm):
    model, tokenizer = tiny_llm
    ours = G.generate(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=3)
    tokenizer.padding_side = "left"
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    new = out.sequences[:, enc["input_ids"].shape[1]:]
    scores = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    for row, (completion,) in enumerate(ours):
        ids = new[row].tolist()
        eos = tokenizer.eos_token_id
        n = ids.index(eos) + 1 if eos in ids else len(ids)
        assert completion.n_tokens == n
        assert completion.text == tokenizer.decode(ids[:n], skip_special_tokens=True)
        torch.testing.assert_close(torch.tensor(completion.logprob),
                                   scores[row, :n].sum().float(), rtol=1e-4, atol=1e-4)


def test_greedy_generation_does_not_depend_on_batching(tiny_llm):
    model, tokenizer = tiny_llm
    together = G.generate(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=3)
    alone = G.generate(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=1)
    assert [c[0].text for c in together] == [c[0].text for c in alone]
    for (a,), (b,) in zip(together, alone, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)


def test_sampling_is_seeded_and_returns_every_sample(tiny_llm):
    model, tokenizer = tiny_llm

    def run(seed):
        return G.generate(model, tokenizer, PROMPTS[:2], max_new_tokens=8, num_samples=3,
                          temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(seed))

    first, again, other = run(0), run(0), run(1)
    assert [len(s) for s in first] == [3, 3]
    assert [[c.text for c in s] for s in first] == [[c.text for c in s] for s in again]
    assert [[c.text for c in s] for s in first] != [[c.text for c in s] for s in other]
    assert all(c.logprob < 0 and 1 <= c.n_tokens <= 8 for s in first for c in s)


def test_stop_at_newline_ends_after_the_first_line_break(tiny_llm):
    model, tokenizer = tiny_llm
    newline = G.newline_token_ids(tokenizer)
    assert len(newline) > 0 and all("\n" in tokenizer.decode([i]) for i in newline.tolist())
    outs = G.generate(model, tokenizer, PROMPTS, max_new_tokens=40, num_samples=16,
                      temperature=1.5, stop_at_newline=True, newline_ids=newline,
                      generator=torch.Generator().manual_seed(0))
    for completion in (c for s in outs for c in s):
        pieces = [tokenizer.decode([i]) for i in completion.token_ids]
        assert len(pieces) == completion.n_tokens
        assert not any("\n" in piece for piece in pieces[:-1])
        assert ("\n" in pieces[-1]) == (completion.finish == "newline")
    assert any(c.finish == "newline" for s in outs for c in s)


@pytest.mark.parametrize(("top_p", "top_k", "shortlist"), [
    (0.9, None, 64),   # nucleus inside the shortlist: the fast path
    (0.9, None, 3),    # nucleus wider than the shortlist: the full-vocabulary fallback
    (None, 5, 3),      # top-k beyond the shortlist
    (None, 4, 64),
    (0.7, 4, 64),      # top-k, then the nucleus of the renormalised top-k
    (0.8, 10, 3),      # both, wider than the shortlist
    (0.5, 10, 8),      # both; the nucleus fits in the shortlist
])
def test_sample_next_draws_from_the_filtered_distribution(top_p, top_k, shortlist):
    from helpers.generation import filter_logits

    logits = torch.linspace(0.0, 3.0, 12).repeat(4000, 1)
    drawn = G.sample_next(logits, top_p, top_k, torch.Generator().manual_seed(0), shortlist)
    expected = filter_logits(logits[:1], top_k, top_p).softmax(-1)[0]
    frequency = torch.bincount(drawn, minlength=12).double() / len(drawn)
    torch.testing.assert_close(frequency, expected.double(), atol=0.03, rtol=0)
    assert set(drawn.tolist()) == set(expected.nonzero().squeeze(-1).tolist())


def test_samples_share_their_prompt_but_not_their_draws(tiny_llm):
    model, tokenizer = tiny_llm
    (samples,) = G.generate(model, tokenizer, PROMPTS[:1], max_new_tokens=6, num_samples=6,
                            temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert len(samples) == 6 and len({c.text for c in samples}) > 1
    (greedy,) = G.generate(model, tokenizer, PROMPTS[:1], max_new_tokens=6, num_samples=3)
    assert len({(c.text, round(c.logprob, 4)) for c in greedy}) == 1


def test_generate_rejects_bad_sizes(tiny_llm):
    model, tokenizer = tiny_llm
    with pytest.raises(ValueError, match="positive"):
        G.generate(model, tokenizer, PROMPTS, max_new_tokens=0)


def test_continuing_from_kept_states_equals_generating_in_one_go(tiny_llm):
    model, tokenizer = tiny_llm
    whole = G.generate(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=3)
    first = G.generate(model, tokenizer, PROMPTS, max_new_tokens=5, batch_size=2,
                       keep_states=True)
    rest = G.continue_generation(model, tokenizer, [c.state for (c,) in first],
                                 max_new_tokens=7, batch_size=3, keep_states=True)
    compared = 0
    for (one,), (head,), (tail,) in zip(whole, first, rest, strict=True):
        if head.finish == "eos":
            continue
        compared += 1
        assert head.token_ids + tail.token_ids == one.token_ids[:len(head.token_ids)
                                                                + len(tail.token_ids)]
        assert head.logprob + tail.logprob == pytest.approx(one.logprob, abs=1e-4)
    assert compared >= 2
    # samples of a continuation start from the same state and differ only by their draws
    (forks,) = G.continue_generation(model, tokenizer, [first[0][0].state], max_new_tokens=6,
                                     num_samples=4, temperature=1.5,
                                     generator=torch.Generator().manual_seed(0))
    assert len(forks) == 4 and len({c.token_ids for c in forks}) > 1


def test_stop_at_answer_ends_at_the_closing_brace_of_the_box(tiny_llm):
    model, tokenizer = tiny_llm
    box = tokenizer("so \\boxed{12} and more", add_special_tokens=False)["input_ids"]

    class Scripted(torch.nn.Module):
        """The tiny model, its logits replaced: decoding step k writes ``box[k]``."""

        def __init__(self):
            super().__init__()
            self.inner, self.config, self.steps = model, model.config, 0

        def forward(self, **kwargs):
            out = self.inner(**kwargs)
            if "attention_mask" in kwargs:  # a decoding step, not the shared prefix
                out.logits = torch.full_like(out.logits[:, -1:], -1e4)
                out.logits[..., box[min(self.steps, len(box) - 1)]] = 0.0
                self.steps += 1
            return out

    (plain,) = G.generate(Scripted(), tokenizer, PROMPTS[2:], max_new_tokens=len(box))
    (stopped,) = G.generate(Scripted(), tokenizer, PROMPTS[2:], max_new_tokens=len(box),
                            stop_at_answer=True)
    assert plain[0].finish == "length" and plain[0].text.endswith("and more")
    assert stopped[0].finish == "answer" and stopped[0].text.endswith("\\boxed{12}")
    assert stopped[0].n_tokens < plain[0].n_tokens


def test_measure_throughput_counts_every_generated_token(tiny_llm):
    model, tokenizer = tiny_llm
    rows = G.measure_throughput(model, tokenizer, PROMPTS[0], [1, 3], new_tokens=4,
                                generator=torch.Generator().manual_seed(0))
    assert [r["batch"] for r in rows] == [1, 3]
    assert all(1 <= r["tokens"] <= 4 * r["batch"] and r["tokens_per_s"] > 0 for r in rows)
