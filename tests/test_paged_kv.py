"""helpers.paged_kv: allocators, copy-on-write correctness and the serving simulation."""

import numpy as np
import pytest

from helpers import paged_kv as pk


def test_contiguous_first_fit_and_coalescing():
    alloc = pk.ContiguousAllocator(100)
    a, b, c = alloc.allocate(30), alloc.allocate(30), alloc.allocate(30)
    assert (a, b, c) == (0, 30, 60) and alloc.allocate(20) is None  # 10 slots left
    alloc.free(0, 30)
    alloc.free(60, 30)
    # 70 slots free, but in two holes of 30 and 40: external fragmentation
    assert alloc.free_slots == 70 and alloc.largest_hole == 40 and alloc.allocate(50) is None
    alloc.free(30, 30)
    assert alloc.free_chunks == [(0, 100)]
    with pytest.raises(ValueError, match="overlap"):
        alloc.free(10, 5)


def test_block_allocator_reads_back_and_frees():
    alloc = pk.BlockAllocator(num_blocks=4, block_size=4)
    assert alloc.add_sequence(0, list(range(10)))  # 3 blocks
    assert alloc.used_blocks == 3 and alloc.read(0) == list(range(10))
    assert not alloc.add_sequence(1, list(range(5)))  # needs 2, 1 free: nothing allocated
    assert 1 not in alloc.tables and alloc.free_blocks == 1
    for t in range(10, 16):
        assert alloc.append(0, t)
    assert alloc.used_blocks == 4 and not alloc.append(0, 99)  # 4 blocks of 4 full
    assert alloc.read(0) == list(range(16))
    alloc.free(0)
    assert alloc.free_blocks == 4 and (alloc.ref == 0).all()


def test_fork_shares_blocks_and_copy_on_write_keeps_sequences_apart():
    alloc = pk.BlockAllocator(num_blocks=10, block_size=4)
    alloc.add_sequence(0, [1, 2, 3, 4, 5, 6])  # 2 blocks, the second half full
    alloc.fork(0, 1)
    assert alloc.used_blocks == 2 and alloc.ref[alloc.tables[0]].tolist() == [2, 2]
    alloc.append(0, 70)  # writes into the shared half-full block: copy
    alloc.append(1, 80)
    assert alloc.copies == 1  # after the first copy, sequence 1 owns the old block alone
    assert alloc.read(0) == [1, 2, 3, 4, 5, 6, 70] and alloc.read(1) == [1, 2, 3, 4, 5, 6, 80]
    assert alloc.tables[0][0] == alloc.tables[1][0]  # the full first block is still shared
    alloc.free(0)
    assert alloc.read(1) == [1, 2, 3, 4, 5, 6, 80] and alloc.used_blocks == 2


def test_parallel_sampling_and_beam_search_share_memory():
    out = pk.parallel_sampling_blocks(64, [10, 20, 30, 40], block_size=16)
    # shared: 4 prompt blocks once + each sample's own blocks
    assert out["shared"] == 4 + 1 + 2 + 2 + 3 and out["unshared"] == 5 + 6 + 6 + 7
    beam = pk.beam_search_blocks(48, width=4, steps=40, block_size=8)
    assert beam["shared"] < beam["unshared"]


@pytest.mark.parametrize("scheme", ["contiguous", "paged"])
def test_serving_finishes_every_request_and_conserves_tokens(scheme):
    reqs = pk.random_requests(40, np.random.default_rng(1), (8, 64), (4, 128), 128)
    res = pk.simulate_serving(reqs, capacity=1024, scheme=scheme, block_size=16)
    assert res.generated_tokens == sum(r.output_len for r in reqs)
    assert res.steps >= max(r.output_len for r in reqs)
    frac = res.fractions()
    assert 0 < frac["used"] <= 1 and frac["used"] + frac["wasted"] <= 1 + 1e-9
    assert max(res.used) <= 1024


def test_paged_wastes_less_and_batches_more_than_contiguous():
    reqs = pk.random_requests(80, np.random.default_rng(0), (16, 128), (8, 256), 256)
    cont = pk.simulate_serving(reqs, 4096, "contiguous")
    paged = pk.simulate_serving(reqs, 4096, "paged", block_size=16)
    assert paged.fractions()["wasted"] < cont.fractions()["wasted"]
    assert paged.throughput > cont.throughput
    # paged slack is below one block per running sequence
    assert all(i < 16 * n for i, n in zip(paged.internal, paged.running, strict=True))


def test_request_validation_and_unknown_scheme():
    with pytest.raises(ValueError):
        pk.Request(0, 10, 20, 10)
    with pytest.raises(ValueError, match="scheme"):
        pk.simulate_serving([], 10, "buddy")


def test_duration_prices_steps_by_the_roofline():
    one = [pk.Request(0, prompt_len=4, output_len=3, max_new_tokens=3)]
    res = pk.simulate_serving(one, capacity=64, scheme="paged", block_size=4)
    assert res.prefill == [4, 0, 0] and res.running == [1, 1, 1] and res.used == [5, 6, 7]
    # prefill pass max(1, 4/2) = 2; decoding passes 1 + 0.1 * used = 1.5, 1.6, 1.7
    assert res.duration(ridge_tokens=2, kv_read_per_slot=0.1) == pytest.approx(2 + 4.8)
    assert res.duration() == 3 + 1  # memory-bound limit: one weight read per pass
    assert res.goodput(2, 0.1) == pytest.approx(3 / 6.8)


@pytest.mark.parametrize("scheme", ["contiguous", "paged"])
def test_recomputation_is_prefilled_again_and_priced(scheme):
    reqs = pk.random_requests(60, np.random.default_rng(2), (16, 128), (8, 256), 256)
    res = pk.simulate_serving(reqs, 2048, scheme, block_size=16)
    assert (res.preemptions > 0) == (scheme == "paged")  # this memory is too small for paging
    assert sum(res.prefill) == sum(r.prompt_len for r in reqs) + res.recomputed_tokens
    # ridge 1: every token costs a weight read, so the duration counts every token computed
    assert res.duration(ridge_tokens=1) == res.generated_tokens + sum(res.prefill)
    assert res.goodput(1) < res.goodput() <= res.throughput
