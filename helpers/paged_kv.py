"""KV-cache memory management in LLM serving, simulated: contiguous reservation vs paging.

A toy of the memory side of vLLM (Kwon et al., SOSP 2023). Memory is counted in *token
slots* (one slot holds one token's keys and values for every layer); no tensors are stored
but the token ids themselves, so that copy-on-write can be checked for correctness.

- :class:`ContiguousAllocator`: one contiguous chunk per request, first-fit over a linear
  address space (what pre-vLLM systems do: reserve the request's maximum length up front).
- :class:`BlockAllocator`: fixed-size physical blocks, a block table per sequence, reference
  counts, ``fork`` (share every block) and copy-on-write when a shared block is written.
- :func:`simulate_serving`: a step-by-step decoding simulation of a request stream under
  either scheme; :meth:`ServingResult.duration` prices its steps with a roofline (prefill
  passes, recomputation after preemption and KV reads included), so that
  :meth:`ServingResult.goodput` counts recomputation as cost; :func:`parallel_sampling_blocks`
  and :func:`beam_search_blocks` count the blocks used with and without sharing.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Request:
    """One generation request: prompt length, the output length it will actually reach (unknown
    to the server in advance), and the maximum number of new tokens the user allows."""

    rid: int
    prompt_len: int
    output_len: int
    max_new_tokens: int
    arrival: int = 0

    def __post_init__(self):
        if not (self.prompt_len > 0 and 0 < self.output_len <= self.max_new_tokens):
            raise ValueError(f"need prompt_len > 0 and 0 < output_len <= max_new_tokens: {self}")


def random_requests(n: int, rng: np.random.Generator, prompt_range: tuple[int, int] = (16, 256),
                    output_range: tuple[int, int] = (8, 512), max_new_tokens: int = 512,
                    arrivals_per_step: float = math.inf) -> list[Request]:
    """``n`` requests with uniform prompt and output lengths (inclusive ranges); all arrive at
    step 0 unless ``arrivals_per_step`` is finite (Poisson arrivals)."""
    prompts = rng.integers(prompt_range[0], prompt_range[1] + 1, n)
    outputs = rng.integers(output_range[0], min(output_range[1], max_new_tokens) + 1, n)
    if math.isinf(arrivals_per_step):
        arrivals = np.zeros(n, dtype=int)
    else:
        arrivals = np.floor(np.cumsum(rng.exponential(1 / arrivals_per_step, n))).astype(int)
    return [Request(i, int(p), int(o), max_new_tokens, int(a))
            for i, (p, o, a) in enumerate(zip(prompts, outputs, arrivals, strict=True))]


class ContiguousAllocator:
    """First-fit allocation of contiguous chunks in ``[0, capacity)`` with coalescing frees."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.free_chunks: list[tuple[int, int]] = [(0, capacity)]  # (start, size), sorted

    def allocate(self, size: int) -> int | None:
        """Start of a free chunk of ``size`` slots (first fit), or None if no hole is big enough."""
        for i, (start, length) in enumerate(self.free_chunks):
            if length >= size:
                if length == size:
                    del self.free_chunks[i]
                else:
                    self.free_chunks[i] = (start + size, length - size)
                return start
        return None

    def free(self, start: int, size: int) -> None:
        """Return ``[start, start + size)`` and merge it with adjacent holes."""
        chunks = sorted([*self.free_chunks, (start, size)])
        merged: list[tuple[int, int]] = []
        for s, n in chunks:
            if merged and merged[-1][0] + merged[-1][1] == s:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                if merged and merged[-1][0] + merged[-1][1] > s:
                    raise ValueError(f"double free or overlap at slot {s}")
                merged.append((s, n))
        self.free_chunks = merged

    @property
    def free_slots(self) -> int:
        return sum(n for _, n in self.free_chunks)

    @property
    def largest_hole(self) -> int:
        return max((n for _, n in self.free_chunks), default=0)


class BlockAllocator:
    """Paged KV memory: ``num_blocks`` physical blocks of ``block_size`` slots.

    Each sequence has a block table (logical block i -> physical block). ``fork`` shares all of
    a parent's blocks with a child (reference counts + 1); ``append`` writing into a block whose
    reference count is > 1 first copies it (copy-on-write). ``slots (num_blocks, block_size)``
    holds the token ids written, so :meth:`read` can check every sequence's contents.
    """

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.slots = np.full((num_blocks, block_size), -1, dtype=np.int64)
        self.ref = np.zeros(num_blocks, dtype=np.int64)
        self.free_list: deque[int] = deque(range(num_blocks))
        self.tables: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}
        self.copies = 0  # copy-on-write block copies made so far

    @property
    def free_blocks(self) -> int:
        return len(self.free_list)

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - len(self.free_list)

    def blocks_for(self, n_tokens: int) -> int:
        """Blocks needed to hold ``n_tokens`` tokens."""
        return -(-n_tokens // self.block_size)

    def _take(self) -> int:
        block = self.free_list.popleft()
        self.ref[block] = 1
        self.slots[block] = -1
        return block

    def add_sequence(self, seq: int, tokens: list[int] | np.ndarray) -> bool:
        """Store a new sequence's ``tokens``; False (nothing allocated) if blocks run out."""
        if seq in self.tables:
            raise KeyError(f"sequence {seq} already exists")
        needed = self.blocks_for(len(tokens))
        if needed > self.free_blocks:
            return False
        self.tables[seq], self.lengths[seq] = [], 0
        for token in tokens:
            self.append(seq, int(token))
        return True

    def append(self, seq: int, token: int) -> bool:
        """Write one token at the end of ``seq``; False (nothing changed) if a block is needed
        and none is free."""
        table, length = self.tables[seq], self.lengths[seq]
        offset = length % self.block_size
        if offset == 0:  # the last block is full (or there is none): a new block
            if not self.free_list:
                return False
            table.append(self._take())
        elif self.ref[table[-1]] > 1:  # shared last block: copy on write
            if not self.free_list:
                return False
            old, new = table[-1], self._take()
            self.slots[new, :offset] = self.slots[old, :offset]
            self.ref[old] -= 1
            table[-1] = new
            self.copies += 1
        self.slots[table[-1], offset] = token
        self.lengths[seq] = length + 1
        return True

    def fork(self, parent: int, child: int) -> None:
        """``child`` starts as a copy of ``parent`` sharing all its blocks (no memory used)."""
        if child in self.tables:
            raise KeyError(f"sequence {child} already exists")
        self.tables[child] = list(self.tables[parent])
        self.lengths[child] = self.lengths[parent]
        for block in self.tables[child]:
            self.ref[block] += 1

    def free(self, seq: int) -> None:
        """Drop ``seq``; blocks nobody references any more return to the free list."""
        for block in self.tables.pop(seq):
            self.ref[block] -= 1
            if self.ref[block] == 0:
                self.free_list.append(block)
        del self.lengths[seq]

    def read(self, seq: int) -> list[int]:
        """The token ids of ``seq`` gathered through its block table."""
        table, length = self.tables[seq], self.lengths[seq]
        flat = self.slots[table].reshape(-1) if table else np.empty(0, dtype=np.int64)
        return flat[:length].tolist()


@dataclass
class ServingResult:
    """Per-step memory accounting of one :func:`simulate_serving` run (all in token slots)."""

    scheme: str
    capacity: int
    steps: int = 0
    generated_tokens: int = 0
    preemptions: int = 0
    recomputed_tokens: int = 0  # tokens whose KV a preempted request must compute again
    used: list[int] = field(default_factory=list)       # slots holding a token's KV
    reserved: list[int] = field(default_factory=list)   # allocated, to be filled by later tokens
    internal: list[int] = field(default_factory=list)   # allocated, never to be filled
    external: list[int] = field(default_factory=list)   # free while a request waits for memory
    running: list[int] = field(default_factory=list)    # requests decoding in the step
    prefill: list[int] = field(default_factory=list)    # prompt tokens prefilled in the step
    #                                                     (recomputed tokens included)

    @property
    def throughput(self) -> float:
        """Generated tokens per decoding step (prefill and recomputation free)."""
        return self.generated_tokens / max(self.steps, 1)

    def duration(self, ridge_tokens: float = math.inf, kv_read_per_slot: float = 0.0) -> float:
        """The run's time in units of one read of the model weights, by a roofline: a forward
        pass over ``n`` tokens costs ``max(1, n / ridge_tokens)`` (memory-bound until the
        compute of ``n`` tokens exceeds the weight read). A step that admits requests first runs
        a prefill pass over their prompts (a recomputed request's prompt is everything it had
        stored), then the decoding pass, which also reads the ``used`` KV slots:
        ``max(1 + kv_read_per_slot * used, running / ridge_tokens)``. Idle steps cost 1."""
        running, used = np.array(self.running, float), np.array(self.used, float)
        prefill = np.array(self.prefill, float)
        decode = np.maximum(1 + kv_read_per_slot * used, running / ridge_tokens)
        prefill_pass = np.where(prefill > 0, np.maximum(1, prefill / ridge_tokens), 0)
        return float(self.steps - len(self.running) + decode.sum() + prefill_pass.sum())

    def goodput(self, ridge_tokens: float = math.inf, kv_read_per_slot: float = 0.0) -> float:
        """Generated tokens per unit of :meth:`duration`: recomputation counts as cost."""
        return self.generated_tokens / self.duration(ridge_tokens, kv_read_per_slot)

    def fractions(self) -> dict[str, float]:
        """Mean share of the capacity that is used, reserved, internally fragmented, externally
        fragmented, over the steps; ``wasted`` is the sum of the last three."""
        mean = {k: float(np.mean(getattr(self, k))) / self.capacity
                for k in ("used", "reserved", "internal", "external")}
        mean["wasted"] = mean["reserved"] + mean["internal"] + mean["external"]
        return mean

    def wasted_share_of_allocated(self) -> float:
        """Allocated-but-not-holding-KV slots over allocated slots, averaged over steps."""
        used, alloc = np.array(self.used), np.array(self.used) + self.reserved + self.internal
        return float(np.mean(1 - used / np.maximum(alloc, 1)))


def simulate_serving(requests: list[Request], capacity: int, scheme: str, block_size: int = 16,
                     max_steps: int = 100_000) -> ServingResult:
    """Decode ``requests`` step by step in ``capacity`` token slots; one token per running request
    per step, admissions first-come first-served.

    ``scheme="contiguous"`` reserves ``prompt_len + max_new_tokens`` contiguous slots at
    admission (first fit). ``scheme="paged"`` allocates blocks of ``block_size`` on demand; when a
    running request needs a block and none is free, the most recently admitted request is
    preempted (its blocks freed, recomputed later: vLLM's recomputation).
    """
    if scheme not in ("contiguous", "paged"):
        raise ValueError(f"scheme must be 'contiguous' or 'paged', got {scheme!r}")
    result = ServingResult(scheme, capacity)
    waiting = deque(sorted(requests, key=lambda r: (r.arrival, r.rid)))
    # running: rid -> [request, tokens stored, tokens generated, chunk start]
    running: dict[int, list] = {}
    contiguous = ContiguousAllocator(capacity) if scheme == "contiguous" else None
    paged = BlockAllocator(capacity // block_size, block_size) if scheme == "paged" else None
    step = 0
    while (waiting or running) and step < max_steps:
        blocked, prefill = False, 0
        while waiting and waiting[0].arrival <= step:  # admission, FCFS
            req = waiting[0]
            if contiguous is not None:
                size = req.prompt_len + req.max_new_tokens
                if size > capacity:
                    raise ValueError(f"request {req.rid} needs {size} slots > capacity {capacity}")
                start = contiguous.allocate(size)
                if start is None:
                    blocked = True
                    break
                running[req.rid] = [req, req.prompt_len, 0, start]
            else:
                if paged.blocks_for(req.prompt_len + 1) > paged.free_blocks:
                    blocked = True
                    break
                paged.add_sequence(req.rid, np.zeros(req.prompt_len, dtype=np.int64))
                running[req.rid] = [req, req.prompt_len, 0, None]
            prefill += req.prompt_len
            waiting.popleft()
        if not running:
            if blocked:
                raise ValueError("a request does not fit in an empty memory")
            step += 1
            continue
        # decoding: every running request writes one token's KV
        for rid in list(running):
            if rid not in running:
                continue  # preempted earlier in this step
            state = running[rid]
            if paged is not None:
                while not paged.append(rid, 1):
                    victim = next(reversed(running))  # the latest admitted
                    req_v, stored_v, generated_v, _ = running.pop(victim)
                    paged.free(victim)
                    result.preemptions += 1
                    result.recomputed_tokens += stored_v
                    # recomputation: the tokens generated so far join the prompt
                    waiting.appendleft(Request(req_v.rid, stored_v, req_v.output_len - generated_v,
                                               req_v.max_new_tokens - generated_v, step))
                    blocked = True
                    if victim == rid:
                        break
                if rid not in running:
                    continue
            state[1] += 1
            state[2] += 1
            result.generated_tokens += 1
        # accounting at the end of the step (before finished requests free memory)
        used = sum(s[1] for s in running.values())
        if contiguous is not None:
            reserved = sum(s[0].prompt_len + s[0].output_len - s[1] for s in running.values())
            internal = sum(s[0].max_new_tokens - s[0].output_len for s in running.values())
            free = contiguous.free_slots
        else:
            allocated = sum(len(paged.tables[r]) for r in running) * block_size
            reserved, internal = 0, allocated - used  # slack in each sequence's last block
            free = paged.free_blocks * block_size + capacity % block_size
        result.used.append(used)
        result.reserved.append(reserved)
        result.internal.append(internal)
        result.external.append(free if blocked else 0)
        result.running.append(len(running))
        result.prefill.append(prefill)
        for rid in [r for r, s in running.items() if s[2] >= s[0].output_len]:
            req, _, _, start = running.pop(rid)
            if contiguous is not None:
                contiguous.free(start, req.prompt_len + req.max_new_tokens)
            else:
                paged.free(rid)
        step += 1
    result.steps = step
    return result


def parallel_sampling_blocks(prompt_len: int, output_lens: list[int], block_size: int,
                             rng: np.random.Generator | None = None) -> dict[str, int]:
    """Blocks held at the end of parallel sampling (one prompt, ``len(output_lens)`` samples),
    with the prompt's blocks shared by ``fork`` + copy-on-write, and without sharing; checks that
    every sample reads back its own tokens."""
    rng = rng or np.random.default_rng(0)
    n = len(output_lens)
    total = n * (prompt_len + max(output_lens)) // block_size + 2 * n + 2
    alloc = BlockAllocator(total, block_size)
    prompt = rng.integers(0, 1000, prompt_len)
    if not alloc.add_sequence(0, prompt):
        raise RuntimeError("not enough blocks for the prompt")
    for i in range(1, n):
        alloc.fork(0, i)
    expected = {i: list(prompt) for i in range(n)}
    for i, length in enumerate(output_lens):
        for _ in range(length):
            token = int(rng.integers(1000, 2000))
            if not alloc.append(i, token):
                raise RuntimeError("ran out of blocks")
            expected[i].append(token)
    for i in range(n):
        if alloc.read(i) != expected[i]:
            raise AssertionError(f"sample {i} reads back wrong tokens")
    unshared = sum(alloc.blocks_for(prompt_len + length) for length in output_lens)
    return {"shared": alloc.used_blocks, "unshared": unshared, "copies": alloc.copies}


def beam_search_blocks(prompt_len: int, width: int, steps: int, block_size: int,
                       rng: np.random.Generator | None = None) -> dict[str, int]:
    """Peak blocks of a simulated beam search (random surviving parents each step) with shared
    prefixes (fork + copy-on-write) and without sharing (every beam its own copy); checks that
    every beam's contents equal its token history."""
    rng = rng or np.random.default_rng(0)
    alloc = BlockAllocator(width * (prompt_len + steps) // block_size + 4 * width + 4, block_size)
    prompt = rng.integers(0, 1000, prompt_len).tolist()
    alloc.add_sequence(0, prompt)
    beams = {0: prompt}
    next_id, peak_shared, peak_unshared = 1, alloc.used_blocks, 0
    for _ in range(steps):
        parents = rng.choice(list(beams), size=width, replace=True)  # the k best candidates
        new_beams = {}
        for parent in parents:
            child, next_id = next_id, next_id + 1
            alloc.fork(int(parent), child)
            token = int(rng.integers(1000, 2000))
            if not alloc.append(child, token):
                raise RuntimeError("ran out of blocks")
            new_beams[child] = beams[int(parent)] + [token]
        for old in beams:
            alloc.free(old)
        beams = new_beams
        peak_shared = max(peak_shared, alloc.used_blocks)
        peak_unshared = max(peak_unshared,
                            sum(alloc.blocks_for(len(t)) for t in beams.values()))
    for seq, tokens in beams.items():
        if alloc.read(seq) != tokens:
            raise AssertionError(f"beam {seq} reads back wrong tokens")
    return {"shared": peak_shared, "unshared": peak_unshared, "copies": alloc.copies}
