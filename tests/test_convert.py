"""convert, merge, save_pretrained / load_pretrained."""

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import sltrain_ext as sl
from sltrain_ext import configs
from sltrain_ext.llama import LlamaForCausalLM
from conftest import mounted_tmpfs


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


def test_saving_over_a_saved_model_on_a_full_disk_keeps_the_old_one(tmp_path):
    # A disk with room for one copy of the weights and a half: the first save
    # fits; the second (the model trained on) cannot be written beside it, so
    # it fails naming the full disk, and the first save still loads exactly.
    model = tiny_llama()
    sl.convert(model, rank=4, density=0.1, alpha=8.0)
    first = {name: t.clone() for name, t in model.state_dict().items()}
    sl.save_pretrained(model, tmp_path / "probe")
    pages = sum(-(-f.stat().st_size // 4096) for f in (tmp_path / "probe").iterdir())  # tmpfs counts pages
    with mounted_tmpfs(tmp_path / "disk", pages * 3 // 2 * 4096) as disk:
        sl.save_pretrained(model, disk / "saved")
        with torch.no_grad():
            model.lm_head.weight.add_(1.0)
        with pytest.raises(OSError, match=r"could not save the model in .*saved: the disk is full .*; a model "
                                          r"saved there before is unchanged"):
            sl.save_pretrained(model, disk / "saved")
        assert sorted(p.name for p in (disk / "saved").iterdir()) == ["model.safetensors", "sltrain_config.json"]
        loaded = sl.load_pretrained(disk / "saved")
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, first[name]), name


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
    # Without checksums it is refused; unverified on request, the support check still stops it.
    config = tmp_path / "m" / "sltrain_config.json"
    meta = json.loads(config.read_text())
    del meta["checksums"]
    config.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="sltrain_config.json has no checksums.*verify=False"):
        sl.load_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="invalid support in state_dict"):
        sl.load_pretrained(tmp_path / "m", verify=False)


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


class TwoBlocks(nn.Module):
    """Two `mlp` layers, for the all-or-nothing tests."""

    def __init__(self, first: nn.Linear, second: nn.Linear):
        super().__init__()
        self.block0, self.block1 = nn.Module(), nn.Module()
        self.block0.mlp, self.block1.mlp = first, second


def assert_nothing_converted(model):
    assert not any(isinstance(m, (sl.SLLinear, sl.LowRankLinear)) for m in model.modules())
    assert not hasattr(model, "sltrain_settings")


def test_a_seed_out_of_int64_on_the_second_layer_converts_nothing():
    model = TwoBlocks(nn.Linear(8, 8), nn.Linear(8, 8))
    with pytest.raises(ValueError, match=r"`seed` = 9223372036854775807: .*seed \+ 1 must be in"):
        sl.convert(model, rank=2, density=0.5, seed=2**63 - 1)
    assert_nothing_converted(model)


def test_a_layer_beyond_int32_nonzeros_converts_nothing():
    with torch.device("meta"):
        model = TwoBlocks(nn.Linear(8, 8), nn.Linear(2**16, 2**16))
    with pytest.raises(ValueError, match=r"`block1.mlp` \(65536 x 65536\) 4,294,967,296 nonzeros, beyond the 2\^31 - 1"):
        sl.convert(model, rank=2, density=1.0)
    assert_nothing_converted(model)


def test_a_failure_while_replacing_puts_the_dense_layers_back(tmp_path):
    # A real allocation failure on the second layer, under an address-space limit in a child process.
    script = tmp_path / "convert_oom.py"
    script.write_text(
        "import resource, torch, sltrain_ext as sl\n"
        "from torch import nn\n"
        "sl.convert(nn.Sequential(nn.Linear(64, 64)), rank=2, density=0.5, target_modules=lambda n, m: True)\n"
        "model = nn.Sequential(nn.Linear(4096, 4096), nn.Linear(4096, 4096))\n"
        "first = model[0]\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_AS)\n"
        "used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "# Room for one replacement (A, B: 32 MiB each; values, col_idx: 32 MiB each), not two.\n"
        "resource.setrlimit(resource.RLIMIT_AS, (used + (200 << 20), hard))\n"
        "try:\n"
        "    sl.convert(model, rank=2048, density=0.5, target_modules=lambda name, m: True)\n"
        "except (RuntimeError, MemoryError) as error:\n"
        "    assert model[0] is first and type(model[1]) is nn.Linear, model\n"
        "    assert not hasattr(model, 'sltrain_settings')\n"
        "    print('restored')\n")
    repository = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            env=os.environ | {"PYTHONPATH": str(repository)})
    assert result.stdout.strip() == "restored", result.stderr


def test_a_root_linear_is_refused():
    layer = nn.Linear(8, 8)
    with pytest.raises(ValueError, match=r"`` *: it is the model itself"):
        sl.convert(layer, rank=2, density=0.5, target_modules=lambda name, module: True)
    assert type(layer) is nn.Linear


def test_a_linear_registered_under_two_names_stays_shared():
    shared = nn.Linear(8, 8)
    model = TwoBlocks(shared, shared)
    report = sl.convert(model, rank=2, density=0.5)
    assert isinstance(model.block0.mlp, sl.SLLinear) and model.block0.mlp is model.block1.mlp
    assert len(report.modules) == 1 and report.modules[0].aliases == ["block1.mlp"]
    assert "(also named block1.mlp)" in str(report)
    sl.merge(model)
    assert type(model.block0.mlp) is nn.Linear and model.block0.mlp is model.block1.mlp


def test_multihead_attention_and_linear_subclasses_with_their_own_forward_are_refused():
    class Gated(nn.Linear):
        def forward(self, x):
            return super().forward(x) * torch.sigmoid(x.sum(-1, keepdim=True))

    model = nn.Module()
    model.attn = nn.MultiheadAttention(8, 2)
    model.mlp = Gated(8, 8)
    with pytest.raises(ValueError) as info:
        sl.convert(model, rank=2, density=0.5)
    message = str(info.value)
    assert "`attn.out_proj`: nn.MultiheadAttention reads its `.weight`" in message
    assert "`mlp`: " in message and "Gated overrides forward" in message
    assert_nothing_converted(model)
    x = torch.randn(3, 1, 8)
    model.attn(x, x, x)  # still works


def test_gpt2_conv1d_layers_are_named_as_such():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    with pytest.raises(ValueError, match="the matching layers are Conv1D, not nn.Linear"):
        sl.convert(model, rank=2, density=0.1)


def test_opt_layers_left_dense_are_reported():
    transformers = pytest.importorskip("transformers")
    config = transformers.OPTConfig(num_hidden_layers=2, hidden_size=16, ffn_dim=32, num_attention_heads=2,
                                    vocab_size=64, max_position_embeddings=16, word_embed_proj_dim=16)
    model = transformers.OPTForCausalLM(config)
    report = sl.convert(model, rank=2, density=0.1)
    assert len(report.modules) == 8  # q, k, v, out_proj of two layers; the MLP is fc1/fc2
    assert sorted(report.skipped) == sorted([f"model.decoder.layers.{i}.fc{j}" for i in range(2) for j in (1, 2)]
                                            + ["lm_head"])
    assert ("5 nn.Linear layers left dense (no `target_modules` match): model.decoder.layers.*.fc1 (x2), "
            "model.decoder.layers.*.fc2 (x2), lm_head") in str(report)


def test_hugging_face_save_pretrained_of_an_unmerged_model_warns_and_merge_fixes_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.OPTConfig(num_hidden_layers=1, hidden_size=16, ffn_dim=32, num_attention_heads=2,
                                    vocab_size=64, max_position_embeddings=16, word_embed_proj_dim=16)
    torch.manual_seed(0)
    model = transformers.OPTForCausalLM(config).eval()
    sl.convert(model, rank=2, density=0.1, target_modules=("proj", "fc"))
    with pytest.warns(UserWarning, match=r"OPTForCausalLM.save_pretrained: this model holds SLTrain layers.*"
                                         r"sltrain_ext.merge\(model\)"):
        model.save_pretrained(tmp_path / "unmerged")
    copied = pickle.loads(pickle.dumps(model))  # the model still pickles; the copy warns for itself
    with pytest.warns(UserWarning, match="this model holds SLTrain layers"):
        copied.save_pretrained(tmp_path / "copied")
    assert copied.save_pretrained.model is copied
    tokens = torch.randint(0, 64, (1, 8))
    expected = model(tokens).logits
    sl.merge(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.save_pretrained(tmp_path / "merged")
    loaded = transformers.OPTForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(loaded(tokens).logits, expected, rtol=1e-5, atol=1e-5)


def saved_tiny_llama(folder):
    model = tiny_llama()
    sl.convert(model, rank=4, density=0.1, seed=0)
    for module in model.modules():
        if isinstance(module, sl.SLLinear):
            nn.init.normal_(module.B, std=0.1)
    sl.save_pretrained(model, folder)
    return model


def edit_config(folder, edit):
    path = folder / "sltrain_config.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("removal", ["deleted", "null"])
def test_a_directory_without_checksums_is_refused_unless_verify_is_off(tmp_path, removal):
    from safetensors.torch import load_file, save_file

    saved_tiny_llama(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    key = "model.layers.0.mlp.up_proj.values"
    state[key] = state[key].flip(0)  # another valid state, not what was saved
    save_file(state, str(weights), metadata={"format": "pt", "sltrain_format_version": "2"})
    edit_config(tmp_path, lambda meta: meta.pop("checksums") if removal == "deleted" else meta.update(checksums=None))
    with pytest.raises(ValueError, match="sltrain_config.json has no checksums: the files cannot be verified"):
        sl.load_pretrained(tmp_path)
    loaded = sl.load_pretrained(tmp_path, verify=False)  # the caller's choice
    assert torch.equal(loaded.state_dict()[key], state[key])


@pytest.mark.parametrize("edit,changes_outputs", [
    (lambda meta: meta["llama_config"].update(rms_norm_eps=0.5), True),
    (lambda meta: meta["sltrain"].update(alpha=64.0), True),
    (lambda meta: meta["sltrain"].update(seed=1), False),  # the loaded support replaces the seed's
], ids=["rms_norm_eps", "alpha", "seed"])
def test_an_edited_configuration_is_refused(tmp_path, edit, changes_outputs):
    # Before, it loaded and changed every output.
    model = saved_tiny_llama(tmp_path)
    edit_config(tmp_path, edit)
    with pytest.raises(ValueError, match=r"configuration \(convert settings, alpha, model config\) does not match"):
        sl.load_pretrained(tmp_path)
    edit_config(tmp_path, lambda meta: meta.pop("config_checksum"))
    with pytest.raises(ValueError, match="its `config_checksum` is missing"):
        sl.load_pretrained(tmp_path)
    tokens = torch.randint(0, 64, (1, 6))
    assert torch.equal(sl.load_pretrained(tmp_path, verify=False)(tokens), model(tokens)) != changes_outputs


def test_a_directory_of_the_previous_format_loads_with_a_warning(tmp_path):
    # What the previous version wrote: tensor checksums, no version, no configuration checksum.
    from safetensors.torch import load_file, save_file

    model = saved_tiny_llama(tmp_path)
    weights = tmp_path / "model.safetensors"
    save_file(load_file(str(weights)), str(weights), metadata={"format": "pt"})
    edit_config(tmp_path, lambda meta: [meta.pop("format_version"), meta.pop("config_checksum")])
    with pytest.warns(UserWarning, match="its tensors are verified, its configuration .* is not"):
        loaded = sl.load_pretrained(tmp_path)
    tokens = torch.randint(0, 64, (1, 6))
    assert torch.equal(loaded(tokens), model(tokens))


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ("[]", "expected a JSON object, got list"),
    ('{"llama_config": null}', "malformed configuration, missing 'sltrain'"),
    ('{"sltrain": {"density": 0.1}, "llama_config": null}', r"malformed configuration \(KeyError: 'target_modules'\)"),
])
def test_a_malformed_config_file_is_named(tmp_path, content, message):
    saved_tiny_llama(tmp_path)
    (tmp_path / "sltrain_config.json").write_text(content)
    with pytest.raises(ValueError, match=f"sltrain_config.json: {message}"):
        sl.load_pretrained(tmp_path, model=tiny_llama(), verify=False)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_get_the_mode_of_a_new_file(tmp_path, umask):
    # safetensors wrote model.safetensors 0600 while the JSON got 0644.
    old = os.umask(umask)
    try:
        saved_tiny_llama(tmp_path)
    finally:
        os.umask(old)
    for name in ("model.safetensors", "sltrain_config.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
