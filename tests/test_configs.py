"""The shipped LLaMA configs reproduce DESIGN.md's parameter counts."""

import pytest

from sltrain_ext import configs


@pytest.mark.parametrize("name,full_millions,sltrain_millions", [
    ("60m", 58.1, 43.5), ("350m", 368, 194), ("1b", 1339, 646),
])
def test_parameter_counts_match_the_original_code(name, full_millions, sltrain_millions):
    config = configs.load(name)
    digits = 1 if full_millions < 100 else 0
    assert round(config.full_rank_parameters() / 1e6, digits) == full_millions
    assert round(config.sltrain_parameters() / 1e6, digits) == sltrain_millions


def test_every_config_loads_and_unknown_names_are_rejected():
    assert configs.available() == ["9m", "20m", "35m", "60m", "130m", "350m", "1b", "7b"]
    for name in configs.available():
        config = configs.load(name)
        assert config.hidden_size % config.num_attention_heads == 0
    assert configs.load("LLaMA_1B").hidden_size == 2048
    with pytest.raises(ValueError, match="unknown config '3b'"):
        configs.load("3b")


def test_parameter_numels_add_up_to_the_counts():
    config = configs.load("350m")
    assert sum(config.parameter_numels(sltrain=False)) == config.full_rank_parameters()
    assert sum(config.parameter_numels(sltrain=True)) == config.sltrain_parameters()
