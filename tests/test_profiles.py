"""helpers.profiles: names, overrides and the shape of every question's table."""

import pytest

from helpers.profiles import PROFILES, check_profile, config, questions, table


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(ValueError, match="smoke, small, full"):
        config("transformer_architecture", "medium")
    with pytest.raises(ValueError, match="unknown profile"):
        check_profile("")


def test_unknown_question_and_override_key_are_rejected():
    with pytest.raises(ValueError, match="unknown question"):
        config("no_such_question", "smoke")
    with pytest.raises(ValueError, match=r"unknown override key\(s\) \['copy_epoch'\]"):
        config("transformer_architecture", "smoke", copy_epoch=3)


def test_overrides_apply_and_are_type_checked():
    cfg = config("transformer_architecture", "smoke", copy_epochs=7, copy_lr_factor=2)
    assert cfg.copy_epochs == 7 and cfg["copy_epochs"] == 7
    assert cfg.copy_lr_factor == 2.0 and isinstance(cfg.copy_lr_factor, float)
    assert cfg.profile == "smoke" and "copy_epochs=7" in cfg.summary()
    with pytest.raises(ValueError, match="expected int"):
        config("transformer_architecture", "smoke", copy_epochs="7")
    with pytest.raises(ValueError, match="expected int"):
        config("transformer_architecture", "smoke", copy_epochs=True)
    with pytest.raises(AttributeError, match="no key"):
        _ = cfg.not_a_key


def test_overrides_do_not_leak_into_the_table():
    config("transformer_architecture", "small", copy_epochs=1)
    assert config("transformer_architecture", "small").copy_epochs != 1


@pytest.mark.parametrize("question", questions())
def test_every_question_defines_the_same_keys_in_every_profile(question):
    tables = table(question)
    keys = [set(tables[p]) for p in PROFILES]
    assert keys[0] == keys[1] == keys[2], f"{question}: profiles disagree on keys"
    for key in keys[0]:
        types = {type(tables[p][key]) for p in PROFILES}
        assert len(types) == 1, f"{question}.{key} changes type across profiles: {types}"


def test_a_table_without_every_profile_is_refused(tmp_path, monkeypatch):
    from helpers import profiles

    (tmp_path / "partial.toml").write_text("[smoke]\nepochs = 1\n")
    monkeypatch.setattr(profiles, "CONFIG_DIR", tmp_path)
    assert questions() == ["partial"]
    with pytest.raises(ValueError, match=r"lacks the profile table\(s\) \['small', 'full'\]"):
        config("partial", "smoke")
