"""helpers.nb.profiles: names, overrides and the shape of every question's table."""

import pytest

from helpers.nb.profiles import PROFILES, check_profile, config, config_path, questions, table

TA = "sharif-1402-hw3/transformer_architecture"


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(ValueError, match="smoke, small, full"):
        config(TA, "medium")
    with pytest.raises(ValueError, match="unknown profile"):
        check_profile("")


def test_unknown_question_and_override_key_are_rejected():
    with pytest.raises(ValueError, match="unknown question"):
        config("no_such_question", "smoke")
    with pytest.raises(ValueError, match=r"unknown override key\(s\) \['copy_epoch'\]"):
        config(TA, "smoke", copy_epoch=3)


def test_overrides_apply_and_are_type_checked():
    cfg = config(TA, "smoke", copy_epochs=7, copy_lr_factor=2)
    assert cfg.copy_epochs == 7 and cfg["copy_epochs"] == 7
    assert cfg.copy_lr_factor == 2.0 and isinstance(cfg.copy_lr_factor, float)
    assert cfg.profile == "smoke" and "copy_epochs=7" in cfg.summary()
    with pytest.raises(ValueError, match="expected int"):
        config(TA, "smoke", copy_epochs="7")
    with pytest.raises(ValueError, match="expected int"):
        config(TA, "smoke", copy_epochs=True)
    with pytest.raises(AttributeError, match="no key"):
        _ = cfg.not_a_key
    assert cfg.overridden == ("copy_epochs", "copy_lr_factor")
    default = config(TA, "smoke").copy_epochs
    assert config(TA, "smoke", copy_epochs=default).overridden == ()  # the profile's own value


def test_overrides_do_not_leak_into_the_table():
    config(TA, "small", copy_epochs=1)
    assert config(TA, "small").copy_epochs != 1


@pytest.mark.parametrize("question", questions())
def test_every_question_defines_the_same_keys_in_every_profile(question):
    tables = table(question)
    keys = [set(tables[p]) for p in PROFILES]
    assert keys[0] == keys[1] == keys[2], f"{question}: profiles disagree on keys"
    for key in keys[0]:
        types = {type(tables[p][key]) for p in PROFILES}
        assert len(types) == 1, f"{question}.{key} changes type across profiles: {types}"


def test_a_table_without_every_profile_is_refused(tmp_path, monkeypatch):
    from helpers.nb import profiles

    (tmp_path / "hw").mkdir()
    (tmp_path / "hw" / "partial.toml").write_text("[smoke]\nepochs = 1\n")
    monkeypatch.setattr(profiles, "CONFIG_ROOT", tmp_path)
    assert questions() == ["hw/partial"]
    with pytest.raises(ValueError, match=r"lacks the profile table\(s\) \['small', 'full'\]"):
        config("hw/partial", "smoke")


def test_a_notebook_path_names_the_toml_beside_it(tmp_path):
    assert config_path(f"notebooks/{TA}.ipynb") == config_path(TA)
    assert config(f"notebooks/{TA}.ipynb", "smoke").question == TA
    outside = tmp_path / "mine.ipynb"
    (tmp_path / "mine.toml").write_text("[smoke]\nn = 1\n[small]\nn = 2\n[full]\nn = 3\n")
    cfg = config(outside, "small")
    assert cfg.question == "mine" and cfg.n == 2
    with pytest.raises(ValueError, match="no config missing.toml"):
        config(tmp_path / "missing.ipynb", "smoke")


@pytest.mark.parametrize("question", questions())
def test_every_smoke_profile_runs_on_one_thread(question):
    """Smoke models are tiny: a second thread gains nothing, and beside another job two threads
    spin on 2 cores (Q5's smoke run took 78 s instead of 16 s beside a two-thread job)."""
    assert table(question)["smoke"].get("torch_threads") == 1
