"""Theory notebooks, part 1 (sharif-1402-hw3 T1-T5, sharif-1404-hw3 T1-T6, answer-sheet-402):
each runs at profile smoke and records the checks it asserted."""

import pytest


def test_lstm_gradients(smoke_metrics):
    m = smoke_metrics("sharif-1402-hw3/T1_lstm_gradients.ipynb")
    assert m["max_abs_error"] < 1e-12 and m["forward_error"] < 1e-12
    assert m["gradcheck_passed"] is True
    assert m["wrong_derivation_error"] > 1e-3 > 1e-14 > m["wrong_derivation_output_gate_change"]


def test_attention_scaling(smoke_metrics):
    m = smoke_metrics("sharif-1402-hw3/T2_attention_scaling.ipynb")
    assert m["max_rel_variance_error"] < 0.15
    assert m["max_weight_unscaled"] > 0.9 > m["max_weight_scaled"]
    assert m["jacobian_ratio"] > 2.5


@pytest.mark.parametrize("assignment", ["sharif-1402-hw3", "sharif-1404-hw3"])
def test_multihead_attention(smoke_metrics, assignment):
    m = smoke_metrics(f"{assignment}/T3_multihead_attention.ipynb")
    assert m["single_head_within_005"] < 0.3 < 0.85 < m["two_heads_within_005"]
    assert m["single_head_extreme_fraction"] > 0.6
    if assignment == "sharif-1402-hw3":  # the full answer builds every construction
        assert m["max_abs_error"] < 1e-6
        # (d)(ii) as printed: head 2 flips with P = 1 - Phi(1/sqrt(1 + alpha)), 400 draws
        p = m["head2_flip_probability_as_printed"]
        assert abs(m["head2_flip_fraction_as_printed"] - p) < 4 * (p * (1 - p) / 400) ** 0.5
        assert 0.3 < m["two_heads_within_005_as_printed"] < m["two_heads_within_005"]
    else:  # the short rerun: draws with a flipped key a, P = Phi(-sqrt 2) at smoke's 400 draws
        se = (m["flipped_key_probability"] * (1 - m["flipped_key_probability"]) / 400) ** 0.5
        assert abs(m["flipped_key_fraction"] - m["flipped_key_probability"]) < 4 * se
        assert m["two_heads_within_005_flipped_key"] < 0.1


def test_vit_resolution(smoke_metrics):
    m = smoke_metrics("sharif-1402-hw3/T4_vit_resolution.ipynb")
    assert m["max_abs_error"] < 1e-5 and m["old_model_refused_new_size"] is True
    assert m["new_sequence_length"] == 1 + (48 // 8) ** 2


def test_sinusoidal_shift(smoke_metrics):
    m = smoke_metrics("sharif-1402-hw3/T5_sinusoidal_shift.ipynb")
    assert m["max_abs_error"] < 1e-9
    assert m["orthogonality_error"] < 1e-12 and m["power_error"] < 1e-9


def test_lstm_bptt(smoke_metrics):
    m = smoke_metrics("sharif-1404-hw3/T1_lstm_bptt.ipynb")
    assert m["max_abs_error"] < 1e-10 and m["seq_len"] >= 5
    assert 0 < m["cell_gradient_decay"] < 1


def test_self_attention_as_fc(smoke_metrics):
    m = smoke_metrics("sharif-1404-hw3/T2_self_attention_as_fc.ipynb")
    assert m["max_abs_error"] < 1e-9 and m["pe_shift_error"] < 1e-9
    assert m["dense_parameters"] == (4 * 3) ** 2  # smoke: N = 4, D = 3
    assert m["attention_parameters"] == 3 * 3 + 2 * 3 * 2
    assert m["span_dimension"] == (3 * 3 - 3 + 1) * 2 * 2  # smoke span: N = 3, D = 2
    assert m["span_dimension_one_layer"] == 3 * 3 - 3 + 1
    assert m["projection_offdiagonal_max"] == 0 == m["projection_diagonal_spread"]
    assert m["min_attention_weight"] > 0


def test_kv_cache(smoke_metrics):
    m = smoke_metrics("sharif-1404-hw3/T4_kv_cache.ipynb")
    assert m["flops_formula_matches"] is True and m["cache_numel_matches"] is True
    assert m["flops_ratio_no_cache_over_cache"] == pytest.approx(1024, rel=0.01)
    assert m["flops_ratio_recompute_kv_over_cache"] == pytest.approx(2_421_424_128 / 7_864_320)
    assert m["mla_flops_over_mha_cache"] == pytest.approx(17_547_264 / 7_864_320)
    assert m["decode_speedup"] > 0


def test_bert_gpt_peft(smoke_metrics):
    m = smoke_metrics("sharif-1404-hw3/T5_bert_gpt_peft.ipynb")
    assert m["lora_count_mismatches"] == 0
    assert m["init_difference"] == 0 and m["grad_A_at_init"] == 0 and m["grad_B_at_init"] > 0
    assert m["merge_error"] < 1e-10


def test_attention_convolution(smoke_metrics):
    m = smoke_metrics("sharif-1404-hw3/T6_attention_convolution.ipynb")
    assert m["max_abs_error"] < 1e-8 < m["first_alpha_error"]
    assert m["dilation_stride_error"] < 1e-8
    assert m["c_error"] < 1e-9 and m["same_size_padding"] == 3 // 2  # smoke: K = 3


def test_answer_sheet_review(smoke_metrics):
    m = smoke_metrics("answer-sheet-402/review.ipynb")
    assert m["claims_checked"] == m["claims_wrong"] + m["claims_correct"] >= 25
    assert m["claims_wrong"] >= 15 and m["claims_correct"] >= 5
    assert m["gradient_error"] < 1e-12
    assert m["total_parameters"] == 258_311_472  # make_model(20k, 30k, N=6, 1024, 4096, 16)
    # the sheet's reading: 4 heads of 192, d_ff 1024, 12 layers; embeddings 50k x 1024, output
    # layer 30,750,000, encoder layer 5,252,352, decoder layer 8,403,456, final norms 2 x 2048
    assert m["total_parameters_sheet_reading"] == (
        51_200_000 + 30_750_000 + 12 * (5_252_352 + 8_403_456) + 2 * 2048)
    assert 10 <= m["claims_assumption_dependent"] < m["claims_checked"]
    assert m["claims_wrong_sheet_reading"] < m["claims_wrong"]
