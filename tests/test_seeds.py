"""helpers.nb.seeds: headline metrics over seeds, kept in the notebook's TOML, shown in the
summary beside each number."""

import json
import tomllib

import pytest

from helpers.nb import run, runtime, seeds
from tests.test_run import _notebook

TOML = "# a question\n[smoke]\nsteps = 1\n\n[small]\nsteps = 2\n\n[full]\nsteps = 3\n"


@pytest.fixture
def seeded(tmp_path):
    path = _notebook(tmp_path / "notebooks" / "hw-s" / "seeded.ipynb", (
        "from helpers.nb import report\n"
        "report.record('score', 0.5 + seed / 10, headline=True)\n"
        "report.record('name', 'gru', headline=True)\n"
        "report.record('not_headline', seed)"))
    path.with_suffix(".toml").write_text(TOML)
    return path


def test_measure_writes_the_spread_and_the_summary_shows_it(seeded, tmp_path):
    spread = seeds.measure(seeded, "smoke", [0, 1, 2])
    assert spread.values == {"score": (0.5, 0.6, 0.7)}  # numeric headline metrics only
    assert spread.sd("score") == pytest.approx(0.1)
    seeds.write_spread(seeded, spread)
    text = seeded.with_suffix(".toml").read_text()
    assert text.startswith(TOML) and tomllib.loads(text)["small"] == {"steps": 2}
    assert seeds.read_spread(seeded) == spread

    result = run.run_notebook(seeded, "smoke", root=tmp_path / "notebooks",
                              report_root=tmp_path / "reports")
    run.write_summary([result], "smoke", report_root=tmp_path / "reports")
    summary = (tmp_path / "reports" / "smoke" / "summary.md").read_text()
    assert "score = 0.5 ± 0.1 (3 seeds)" in summary and "name = gru;" not in summary
    run.write_summary([result], "small", report_root=tmp_path / "reports")  # other profile
    assert "±" not in (tmp_path / "reports" / "small" / "summary.md").read_text().split("|")[-2]


def test_a_run_with_overrides_shows_no_spread(seeded, tmp_path):
    seeds.write_spread(seeded, seeds.SeedSpread("smoke", (0, 1, 2), "2026-01-02",
                                                {"score": (0.5, 0.6, 0.7)}))
    result = run.run_notebook(seeded, "smoke", overrides={"steps": 5},
                              root=tmp_path / "notebooks", report_root=tmp_path / "reports")
    assert result.status == "ok" and result.overrides == {"steps": 5}
    run.write_summary([result], "smoke", report_root=tmp_path / "reports")
    summary = (tmp_path / "reports" / "smoke" / "summary.md").read_text()
    row = summary.split("|")[-2]
    assert row == " score = 0.5; name = gru (overrides: steps=5) " and "±" not in row
    assert json.loads((tmp_path / "reports" / "smoke" / "summary.json").read_text())[
        "notebooks"][0]["seed_sd"] == {}
    same = run.run_notebook(seeded, "smoke", overrides={"steps": 1},  # the profile's value
                            root=tmp_path / "notebooks", report_root=tmp_path / "reports")
    run.write_summary([same], "smoke", report_root=tmp_path / "reports")
    assert "score = 0.5 ± 0.1 (3 seeds)" in (tmp_path / "reports" / "smoke" / "summary.md"
                                             ).read_text()


def test_the_running_notebooks_overrides_hide_its_spread(seeded):
    seeds.write_spread(seeded, seeds.SeedSpread("small", (0, 1, 2), "2026-01-02",
                                                {"score": (0.5, 0.6, 0.7)}))
    labels = {"score": "the score"}
    runtime.setup("small", 0, overrides={"steps": 5}, notebook=seeded)
    assert runtime.overridden_keys(seeded) == ("steps",)
    assert seeds.measured_spread("small", seeded) is None
    assert seeds.target_sentence("small", "score", "the score", 0.6, notebook=seeded) == ""
    assert seeds.spread_sentence("small", labels, seeded).startswith(
        "This run overrides `steps`, so no seed-to-seed spread applies")
    runtime.setup("small", 0, overrides={"steps": 2}, notebook=seeded)  # the profile's value
    assert runtime.overridden_keys(seeded) == ()
    assert seeds.measured_spread("small", seeded).sd("score") == pytest.approx(0.1)
    assert "0.100 for the score" in seeds.spread_sentence("small", labels, seeded)


def test_finished_seeds_are_read_back_until_an_input_changes(seeded, monkeypatch, capsys):
    first = seeds.measure(seeded, "smoke", [3, 4])
    assert first.values == {"score": (0.8, 0.9)}
    seeds.write_spread(seeded, first)  # the spread table is not an input of the runs

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished seed ran again")

    monkeypatch.setattr(run, "run_notebook", must_not_run)
    assert seeds.measure(seeded, "smoke", [4, 3]).values == {"score": (0.9, 0.8)}
    assert capsys.readouterr().out.count("read back from") == 2
    kept = seeds.seed_run_path(seeded, "smoke", 3)
    assert kept.exists() and kept.name.startswith("hw-s-seeded-smoke-seed3-")

    # the date is the day the last seed finished, not the day the table is rewritten
    for seed, day in ((3, "2026-01-02"), (4, "2026-01-05")):
        path = seeds.seed_run_path(seeded, "smoke", seed)
        path.write_text(json.dumps(json.loads(path.read_text()) | {"measured": day}))
    assert seeds.measure(seeded, "smoke", [3, 4]).measured == "2026-01-05"

    config = seeded.with_suffix(".toml")
    config.write_text(config.read_text().replace("steps = 1", "steps = 5"))
    assert seeds.seed_run_path(seeded, "smoke", 3) != kept  # a changed config runs afresh
    with pytest.raises(AssertionError, match="ran again"):
        seeds.measure(seeded, "smoke", [3])


def test_rewriting_replaces_the_table_and_refuses_a_table_after_it(seeded):
    first = seeds.SeedSpread("small", (0, 1), "2026-01-01", {"a/b": (1.0, 3.0)})
    second = seeds.SeedSpread("small", (0, 1, 2), "2026-01-02", {"a/b": (1.0, 2.0, 3.0)})
    seeds.write_spread(seeded, first)
    seeds.write_spread(seeded, second)
    assert seeds.read_spread(seeded) == second
    assert seeded.with_suffix(".toml").read_text().count("[seed_spread]") == 1
    with seeded.with_suffix(".toml").open("a") as f:
        f.write("\n[later]\nx = 1\n")
    with pytest.raises(ValueError, match="must be the last table"):
        seeds.write_spread(seeded, first)


def test_notebook_without_a_spread_reads_none(seeded):
    assert seeds.read_spread(seeded) is None
    assert seeds.SeedSpread("small", (0,), "2026-01-01", {"x": (1.0,)}).sd("x") is None


def test_spread_sentence_gives_each_sd_or_says_it_was_not_measured(seeded):
    labels = {"score": "the score", "other": "the other"}
    assert "not measured at `small`" in seeds.spread_sentence("small", labels, seeded)
    seeds.write_spread(seeded, seeds.SeedSpread(
        "small", (0, 1, 2), "2026-01-02", {"score": (0.5, 0.6, 0.7), "other": (1.0, 1.0, 4.0)}))
    assert seeds.spread_sentence("small", labels, seeded) == (
        "Trained with seeds 0, 1, 2 (whole notebook at `small`, measured 2026-01-02), the "
        "standard deviation from seed to seed is 0.100 for the score and 1.732 for the other.")
    assert "not measured at `smoke`" in seeds.spread_sentence("smoke", labels, seeded)
    assert seeds.measured_spread("small", seeded).sd("score") == pytest.approx(0.1)
    assert seeds.measured_spread("smoke", seeded) is None
    assert "not measured" in seeds.spread_sentence("small", {"missing": "m"}, seeded)


def test_target_sentence_counts_the_seeds_that_meet_the_target(seeded):
    assert seeds.target_sentence("small", "score", "the score", 0.6, notebook=seeded) == ""
    seeds.write_spread(seeded, seeds.SeedSpread(
        "small", (0, 1, 2), "2026-01-02", {"score": (0.5, 0.6, 0.7)}))
    assert seeds.target_sentence("small", "score", "the score", 0.6, notebook=seeded) == (
        "Over seeds 0, 1, 2 (at `small`, 2026-01-02) the score was 0.500 / 0.600 / 0.700: "
        "the target of 0.6 is met by 2 of 3 seeds.")
    lower = seeds.target_sentence("small", "score", "the loss", 0.55, higher_is_better=False,
                                  notebook=seeded, fmt=".2f")
    assert lower.endswith("was 0.50 / 0.60 / 0.70: the target of 0.55 is met by 1 of 3 seeds.")
    assert seeds.target_sentence("smoke", "score", "the score", 0.6, notebook=seeded) == ""
    assert seeds.target_sentence("small", "missing", "m", 0.6, notebook=seeded) == ""


def test_difference_se_is_the_larger_of_the_sample_se_and_the_seed_spread():
    spread = seeds.SeedSpread("small", (0, 1, 2), "2026-01-02", {
        "a": (0.5, 0.6, 0.7), "b": (0.2, 0.2, 0.2), "a_shifted": (0.4, 0.5, 0.6)})
    assert seeds.difference_se(0.01, spread, "a", "b") == pytest.approx(0.1)  # sd of 0.3, 0.4, 0.5
    assert seeds.difference_se(0.5, spread, "a", "b") == 0.5
    # metrics that move together over seeds: their difference does not vary, the sample SE stays
    assert seeds.difference_se(0.01, spread, "a", "a_shifted") == 0.01
    assert seeds.difference_se(0.01, spread, "a", "unmeasured") == pytest.approx(0.1 * 2**0.5)
    assert seeds.difference_se(0.01, spread, "unmeasured", "a") == pytest.approx(0.1 * 2**0.5)
    assert seeds.difference_se(0.01, spread, "x", "y") == 0.01
    assert seeds.difference_se(0.01, None, "a", "b") == 0.01
