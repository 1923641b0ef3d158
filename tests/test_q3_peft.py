"""sharif-1404-hw3 P3 (PEFT) at profile smoke: a tiny random Llama through the same code as
the real model; assert on the metrics the notebook records and on its figures."""

import math
from pathlib import Path


def test_q3_peft_notebook_at_smoke(smoke_run):
    r = smoke_run("sharif-1404-hw3/Q3_peft.ipynb")
    assert r.status == "ok", r.error
    m = r.metrics
    # hand LoRA == peft LoRA with the same A, B; merged == unmerged
    assert m["hand_vs_peft_max_abs_logit_diff"] < 1e-4
    assert m["merged_vs_unmerged_max_abs_logit_diff"] < 1e-4
    losses = [m[k] for k in ("zero_shot_val_loss", "full_ft_val_loss", "best_lora_val_loss",
                             "prefix_random_init_val_loss", "prefix_real_token_init_val_loss")]
    assert all(math.isfinite(v) and 0 < v < 20 for v in losses)
    # a random 400-token model starts near ln(400) = 6.0 and every method trains it a little
    assert abs(m["zero_shot_val_loss"] - math.log(400)) < 0.5
    assert m["full_ft_val_loss"] < m["zero_shot_val_loss"]
    assert m["best_lora_val_loss"] < m["zero_shot_val_loss"]
    assert 0 < m["best_lora_trainable_pct"] < 5 and m["best_lora_rank"] in (1, 4)
    assert m["full_ft_s_per_step"] > 0 and m["best_lora_s_per_step"] > 0
    assert m["full_ft_peak_mb"] >= 0 and m["best_lora_peak_mb"] >= 0
    assert m["notebook_cpu_seconds"] > 0
    # every loss has its standard error over the evaluation sequences; the ranking is judged
    assert m["zero_shot_val_loss_se"] > 0 and m["full_ft_val_loss_se"] > 0
    assert 0 <= m["ranking_gaps_separated"] <= m["ranking_gaps"] == 6  # 7 trainings at smoke
    assert {m[f"lora_r{r}_s_per_step"] > 0 for r in (1, 4)} == {True}
    figures = Path(r.report_path).with_name("Q3_peft_figures")
    assert {p.name for p in figures.glob("*.png")} >= {"val_loss_vs_trainable_params.png",
                                                       "training_loss.png",
                                                       "lora_rank_sweep.png"}
