"""convert, merge, save_pretrained / load_pretrained."""

import json

import pytest
import torch
from torch import nn

import sltrain_ext as sl
from sltrain_ext import configs
from sltrain_ext.llama import LlamaForCausalLM


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(configs.LlamaConfig(
        name="tiny", hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=64, max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rank=4, alpha=8.0, density=0.1))


@pytest.mark.parametrize("name,full,sltrain", [("60m", 58_073_600, 43_529_832), ("350m", 367_969_280, 194_293_616),
                                               ("1b", 1_339_082_752, 645_548_032)])
def test_conversion_reproduces_the_original_counts(name, full, sltrain):
    config = configs.load(name)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    report = sl.convert(model, rank=config.rank, density=config.density, alpha=config.alpha)
    assert (report.trainable_before, report.trainable_after) == (full, sltrain)
    assert len(report.modules) == 7 * config.num_hidden_layers
    assert all(isinstance(m, sl.SLLinear) for n, m in model.named_modules() if n.endswith("_proj"))
    assert isinstance(model.lm_head, nn.Linear)


def test_converts_hf_llama_to_the_same_counts():
    transformers = pytest.importorskip("transformers")
    config = configs.load("60m")
    hf_config = transformers.LlamaConfig(
        hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        vocab_size=config.vocab_size, tie_word_embeddings=False)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(hf_config)
    report = sl.convert(model, rank=config.rank, density=config.density, alpha=config.alpha)
    assert (report.trainable_before, report.trainable_after) == (58_073_600, 43_529_832)


def test_conversion_keeps_device_dtype_bias_and_reports():
    model = nn.Sequential(nn.Linear(8, 16, dtype=torch.float64), nn.ReLU(), nn.Linear(16, 4, bias=False))
    report = sl.convert(model, rank=2, density=0.25, target_modules=lambda name, m: m.in_features == 8)
    assert isinstance(model[0], sl.SLLinear) and isinstance(model[2], nn.Linear)
    assert model[0].A.dtype == torch.float64 and model[0].bias is not None
    assert report.modules[0].nnz == 32 and "1 linear layers converted" in str(report)
    with pytest.raises(ValueError, match="no nn.Linear in the model matches"):
        sl.convert(nn.Sequential(nn.Linear(2, 2)), rank=1, density=0.5, target_modules=("attn",))


def test_lowrank_conversion():
    model = tiny_llama()
    report = sl.convert(model, rank=4, density=None)
    assert all(m.nnz == 0 for m in report.modules)
    assert isinstance(model.model.layers[0].mlp.up_proj, sl.LowRankLinear)
    tokens = torch.randint(0, 64, (2, 9))
    assert torch.isfinite(model.loss(tokens))


@pytest.mark.parametrize("density", [0.1, None])
def test_merge_is_exact(density):
    model = tiny_llama()
    sl.convert(model, rank=4, density=density, alpha=8.0)
    for module in model.modules():
        if hasattr(module, "B"):
            nn.init.normal_(module.B, std=0.1)
    tokens = torch.randint(0, 64, (3, 12))
    expected = model(tokens)
    weights = {n: m.dense_weight() for n, m in model.named_modules() if hasattr(m, "dense_weight")}
    sl.merge(model)
    assert not any(isinstance(m, (sl.SLLinear, sl.LowRankLinear)) for m in model.modules())
    for name, weight in weights.items():
        assert torch.equal(model.get_submodule(name).weight, weight)
    torch.testing.assert_close(model(tokens), expected, rtol=1e-5, atol=1e-5)


def test_save_and_load_pretrained_round_trip(tmp_path):
    model = tiny_llama()
    sl.convert(model, rank=4, density=0.1, seed=3)
    for module in model.modules():
        if isinstance(module, sl.SLLinear):
            nn.init.normal_(module.B, std=0.1)
    sl.save_pretrained(model, tmp_path / "saved")
    loaded = sl.load_pretrained(tmp_path / "saved")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b) and a.dtype == b.dtype, name
    tokens = torch.randint(0, 64, (2, 10))
    assert torch.equal(model(tokens), loaded(tokens))
    # Into a caller's dense model, too.
    again = sl.load_pretrained(tmp_path / "saved", model=tiny_llama(seed=7))
    assert torch.equal(again(tokens), model(tokens))


def test_load_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a save_pretrained directory"):
        sl.load_pretrained(tmp_path)
    model = tiny_llama()
    sl.convert(model, rank=4, density=0.1)
    sl.save_pretrained(model, tmp_path / "m")
    state = sl.pretrained.load_file(str(tmp_path / "m" / "model.safetensors"))
    key = next(k for k in state if k.endswith("col_idx"))
    state[key][0] = 10_000
    sl.pretrained.save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError, match=f"tensor `{key}` does not match its checksum"):
        sl.load_pretrained(tmp_path / "m")
    # Saved before checksums existed: the support check still stops it.
    config = tmp_path / "m" / "sltrain_config.json"
    meta = json.loads(config.read_text())
    del meta["checksums"]
    config.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="invalid support in state_dict"):
        sl.load_pretrained(tmp_path / "m")


def test_a_rank_above_min_in_out_is_refused_naming_the_layer():
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 32))
    with pytest.raises(ValueError, match=r"`rank` = 9 exceeds min\(in, out\) = 8 of `0` \(8 x 16\)"):
        sl.convert(model, rank=9, density=0.1, target_modules=lambda name, module: True)
    assert isinstance(model[0], torch.nn.Linear)  # nothing was replaced


def test_load_pretrained_of_a_non_llama_model_says_to_pass_model(tmp_path):
    model = nn.Sequential(nn.Linear(16, 16))
    sl.convert(model, rank=4, density=0.1, target_modules=lambda name, module: True)
    sl.save_pretrained(model, tmp_path)
    with pytest.raises(ValueError, match=r"call load_pretrained\(directory, model=\.\.\.\)"):
        sl.load_pretrained(tmp_path)
    loaded = sl.load_pretrained(tmp_path, model=nn.Sequential(nn.Linear(16, 16)))
    assert torch.equal(loaded[0].values, model[0].values)


@pytest.mark.parametrize("name", ["col_idx", "values", "A", "B"])
def test_load_pretrained_names_a_tensor_whose_bytes_changed(tmp_path, name):
    from safetensors.torch import load_file, save_file

    model = tiny_llama()
    sl.convert(model, rank=4, density=0.1, seed=0)
    sl.save_pretrained(model, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    key = next(k for k in state if k.endswith("." + name))
    flipped = state[key].clone()
    flipped.view(torch.uint8)[0] ^= 1  # one bit of one element
    state[key] = flipped
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"tensor `{key}` does not match its checksum"):
        sl.load_pretrained(tmp_path)
