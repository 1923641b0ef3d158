"""The theory notebooks of part 2 (iust-1404-hw4 T1-T4, iust-1402-hw5 T1-T3) at profile smoke:
each asserts its own checks; here we assert on the metrics they record."""

import pytest


def test_paged_attention_notebook(smoke_metrics):
    m = smoke_metrics("iust-1404-hw4/T1_paged_attention.ipynb")
    assert m["kv_bytes_per_token_opt13b"] == 2 * 5120 * 40 * 2
    assert 0 <= m["wasted_fraction_paged"] < m["wasted_fraction_contiguous"] < 1
    assert m["wasted_fraction_paged"] < 0.15
    assert m["throughput_ratio_paged_vs_contiguous"] > 1.2
    # recomputation after preemption is priced: goodput gains less than tokens per step
    assert m["recomputed_share_of_output"] > 0
    assert 0 < m["goodput_ratio_paged_vs_contiguous"] < m["throughput_ratio_paged_vs_contiguous"]
    assert 0 < m["memory_saving_parallel_sampling"] < 1
    assert 0 < m["memory_saving_beam_search"] < 1


def test_head_importance_notebook(smoke_metrics):
    m = smoke_metrics("iust-1404-hw4/T2_head_importance.ipynb")
    assert m["gate_gradient_fd_error"] < 1e-6
    assert 0.75 < m["toy_val_accuracy"] <= 1
    assert m["accuracy_no_heads"] < 0.65
    # the heads specialise: single-head ablations differ and the pruning orders separate
    assert m["single_ablation_accuracy_min"] < m["single_ablation_accuracy_max"]
    assert m["prune_area_most_important_first"] < m["prune_area_iterative"]
    assert 0 <= m["rl_heads_kept"] <= 8


def test_additive_attention_notebook(smoke_metrics):
    m = smoke_metrics("iust-1404-hw4/T3_additive_attention.ipynb")
    assert m["params_without_bias"] == 33_300
    assert m["params_with_bias"] == 34_250
    assert m["params_stacked_reading_without_bias"] == 93_300
    assert m["params_stacked_reading_with_bias"] == 94_850
    assert m["stacked_reading_fold_error"] < 1e-5
    assert m["additive_over_dot_time_ratio"] > 1
    assert m["mixture_row_sum_error"] < 1e-5


def test_time_series_transformers_notebook(smoke_metrics):
    m = smoke_metrics("iust-1404-hw4/T4_time_series_transformers.ipynb")
    assert m["variate_permutation_error"] < 1e-4
    assert m["itransformer_test_mse"] > 0 and m["seasonal_naive_test_mse"] > 0
    assert m["n_windows"] > m["n_train_windows"] + m["n_test_windows"] > 0
    assert m["train_test_shared_steps"] == 0


def test_rnn_multiple_choice_notebook(smoke_metrics):
    m = smoke_metrics("iust-1402-hw5/T1_rnn_multiple_choice.ipynb")
    assert m["answers"] == "1:bc 2:c 3:c"
    assert m["unidirectional_future_change"] == 0 < m["bidirectional_future_change"]
    assert m["lm_sequence_probability_sum"] == pytest.approx(1, abs=1e-4)


def test_rnn_bptt_notebook(smoke_metrics):
    m = smoke_metrics("iust-1402-hw5/T2_rnn_bptt.ipynb")
    assert m["max_error_vs_autograd"] < 1e-12
    assert m["max_error_helpers_rnn"] < 1e-12


def test_argmax_attention_notebook(smoke_metrics):
    m = smoke_metrics("iust-1402-hw5/T3_argmax_attention.ipynb")
    assert m["argmax_key_index"] == 4 and m["argmax_output_first"] == 6
    assert m["argmax_query_grad_norm"] == 0 < m["softmax_query_grad_norm"]
    # zeros computed through a connected graph (the zero-temperature softmax), not a missing one
    assert m["argmax_key_grad_norm"] == 0 and m["argmax_training_largest_gradient"] == 0
    assert m["argmax_final_loss"] == pytest.approx(2.0)
    assert m["softmax_final_loss"] < 0.1
