"""Streaming writers: the grown file holds exactly what the in-memory operators compute, in both formats."""

import struct
import zipfile

import pytest
import torch
from conftest import small_config
from safetensors.torch import load_file

import growth.writers as writers
from growth.grow import grow
from growth.operators import add_noise, random_depth, stack, zero_depth
from lit_gpt import GPT


def awkward_state():
    return {"matrix": torch.randn(37, 41), "zeros": torch.zeros((), dtype=torch.bfloat16).expand(13, 7),
            "half": torch.randn(5).bfloat16(), "scalar": torch.tensor(3.0), "empty": torch.empty(0, 4),
            "transposed": torch.randn(100, 3).t(), "ints": torch.arange(10)}


@pytest.mark.parametrize("mmap", [True, False])
def test_pth_round_trip_with_distinct_storages_and_valid_crcs(tmp_path, monkeypatch, mmap):
    monkeypatch.setattr(writers, "CHUNK", 1000)  # several slices per tensor
    state = awkward_state()
    written = []
    writers.write_pth(tmp_path / "w.pth", state, progress=written.append)
    assert sum(written) == sum(t.numel() * t.element_size() for t in state.values())
    with zipfile.ZipFile(tmp_path / "w.pth") as z:
        assert z.testzip() is None
        data = (tmp_path / "w.pth").read_bytes()
        for info in z.infolist():  # the data descriptors after each record hold the CRC too
            if info.flag_bits & 0x08:
                name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
                at = info.header_offset + 30 + name_len + extra_len + info.compress_size
                assert data[at:at + 4] == b"PK\x07\x08" and struct.unpack("<I", data[at + 4:at + 8])[0] == info.CRC
    loaded = torch.load(tmp_path / "w.pth", weights_only=True, mmap=mmap)
    assert list(loaded) == list(state)
    for key, tensor in state.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor)
    pointers = [t.untyped_storage().data_ptr() for t in loaded.values() if t.numel()]
    assert len(set(pointers)) == len(pointers)  # no aliasing, unlike torch.save of views


def test_safetensors_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(writers, "CHUNK", 1000)
    state = awkward_state()
    writers.write_safetensors(tmp_path / "w.safetensors", state)
    loaded = load_file(str(tmp_path / "w.safetensors"))
    for key, tensor in state.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor)


def test_views_and_copies_give_the_same_target():
    src = GPT(small_config("gqa", n_layer=2))
    tgt = small_config("gqa", n_layer=5)
    sd = src.state_dict()
    index_map = [0, 1, 0, 1, 1]
    for op in (stack, zero_depth):
        views, copies = op(src.config, sd, tgt, index_map, copy=False), op(src.config, sd, tgt, index_map)
        assert views.keys() == copies.keys()
        assert all(torch.equal(views[k], copies[k]) for k in views)
    assert views["transformer.h.3.attn.proj.weight"].stride() == (0, 0)  # a broadcast, no memory
    views = random_depth(src.config, sd, tgt, torch.Generator().manual_seed(1), copy=False)
    copies = random_depth(src.config, sd, tgt, torch.Generator().manual_seed(1))
    assert all(torch.equal(views[k], copies[k]) for k in views)


@pytest.mark.parametrize("safetensors", [False, True])
@pytest.mark.parametrize("op", ["stack", "zero-depth"])
def test_grow_command_writes_what_the_operators_compute(tmp_path, op, safetensors):
    src = GPT(small_config("mqa", n_layer=2))
    src.config.to_json(tmp_path / "lit_config.json")
    torch.save(src.state_dict(), tmp_path / "lit_model.pth")
    tgt = small_config("mqa", n_layer=4)
    tgt.to_json(tmp_path / "target.json")
    grow(tmp_path, str(tmp_path / "target.json"), op, tmp_path / "out", noise=0.3, seed=7, safetensors=safetensors)
    operator = stack if op == "stack" else zero_depth
    expected = add_noise(operator(src.config, src.state_dict(), tgt, [0, 1, 0, 1]), tgt, 0.3,
                         torch.Generator().manual_seed(7))
    if safetensors:
        written = load_file(str(tmp_path / "out" / "lit_model.safetensors"))
    else:
        written = torch.load(tmp_path / "out" / "lit_model.pth", weights_only=True)
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    GPT(tgt).load_state_dict(written, strict=True)
