"""geo3d.nn.load_vit: official .pth files and Hugging Face folders (current and older key
names); parity with transformers' Dinov2Model / Dinov2WithRegistersModel on the same
random weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from geo3d.nn import (
    VisionTransformer,
    hf_to_official_state_dict,
    load_vit,
    vit_base,
    vit_from_state_dict,
    vit_giant2,
    vit_large,
    vit_small,
)

tr = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

DIM, DEPTH, HEADS, PATCH, NATIVE = 64, 2, 2, 14, 56


def _hf_model(registers: bool, swiglu: bool, seed: int = 0):
    kw = dict(
        hidden_size=DIM,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        image_size=NATIVE,
        patch_size=PATCH,
        use_swiglu_ffn=swiglu,
    )
    if registers:
        model = tr.Dinov2WithRegistersModel(
            tr.Dinov2WithRegistersConfig(num_register_tokens=4, **kw)
        )
    else:
        model = tr.Dinov2Model(tr.Dinov2Config(**kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every tensor random: LayerNorm, LayerScale, biases, tokens
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g) + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def _compare(
    vit: VisionTransformer, hf, hw, registers: int, masks=None, dtype=torch.float32
) -> float:
    g = torch.Generator().manual_seed(hw[0] * 100 + hw[1])
    x = torch.randn(2, 3, *hw, generator=g, dtype=dtype)
    with torch.no_grad():
        ref = hf(pixel_values=x, bool_masked_pos=masks).last_hidden_state
        out = vit.forward_features(x, masks=masks)
    r = 1 + registers
    errs = [
        (ref[:, 0] - out["cls"]).abs().max(),
        (ref[:, 1:r] - out["registers"]).abs().max() if registers else torch.zeros(()),
        (ref[:, r:] - out["patch_tokens"].flatten(2).transpose(1, 2)).abs().max(),
    ]
    assert out["patch_tokens"].shape[-2:] == (hw[0] // PATCH, hw[1] // PATCH)
    # relative to the output's magnitude (at least 1): float32 rounding scales with it, and
    # transformers' attention kernel (sdpa or eager, chosen by its version) differs from ours
    # by a few ulp of values up to ~5 (seen: 1.3e-5 absolute, 2.5e-6 relative, at 42x70)
    return float(max(errs)) / max(1.0, float(ref.abs().max()))


SIZES = [(56, 56), (28, 70), (84, 42)]


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    out = {}
    for registers in (False, True):
        for swiglu in (False, True):
            model = _hf_model(registers, swiglu)
            d = tmp_path_factory.mktemp(f"hf_r{int(registers)}_s{int(swiglu)}")
            model.save_pretrained(d)
            out[registers, swiglu] = (d, model)
    return out


class TestHFParity:
    @pytest.mark.parametrize("registers", [False, True])
    @pytest.mark.parametrize("swiglu", [False, True])
    def test_hf_mode_all_sizes(self, hf_folders, registers, swiglu):
        folder, hf = hf_folders[registers, swiglu]
        assert (folder / "model.safetensors").exists()
        vit = load_vit(folder, interpolate="hf")
        assert (vit.num_register_tokens, vit.ffn, vit.num_heads) == (
            4 * registers,
            "swiglu" if swiglu else "mlp",
            HEADS,
        )
        for hw in SIZES:
            assert _compare(vit, hf, hw, vit.num_register_tokens) <= 1e-5, hw

    @pytest.mark.parametrize("registers", [False, True])
    def test_official_mode(self, hf_folders, registers):
        folder, hf = hf_folders[registers, False]
        vit = load_vit(folder)  # official interpolation
        assert _compare(vit, hf, (56, 56), vit.num_register_tokens) <= 1e-5
        err = _compare(vit, hf, (28, 70), vit.num_register_tokens)
        if registers:  # the registers model: transformers == official (size + antialias)
            assert err <= 1e-5
        else:  # Dinov2Model omits the 0.1 offset
            assert err > 1e-3

    def test_masks(self, hf_folders):
        folder, hf = hf_folders[False, False]
        vit = load_vit(folder, interpolate="hf")
        masks = torch.zeros(2, 16, dtype=torch.bool)
        masks[0, 3] = masks[1, 7] = masks[1, 8] = True
        with torch.no_grad():
            hf.embeddings.mask_token.normal_(generator=torch.Generator().manual_seed(5))
        vit.mask_token.data.copy_(hf.embeddings.mask_token.data)
        assert _compare(vit, hf, (56, 56), 0, masks=masks) <= 1e-5


_OLD = {  # transformers >= 5 name -> the older name
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
    "mlp.down_proj": "mlp.weights_out",
}


def _to_old_names(sd):
    out = {}
    for k, v in sd.items():
        for new, old in _OLD.items():
            k = k.replace(new, old)
        out[k] = v
    for k in [k for k in out if "mlp.gate_proj" in k]:  # older SwiGLU: fused weights_in
        up = k.replace("gate_proj", "up_proj")
        out[k.replace("gate_proj", "weights_in")] = torch.cat([out.pop(k), out.pop(up)], 0)
    return out


class TestOlderHFNames:
    @pytest.mark.parametrize("swiglu", [False, True])
    def test_old_key_names_safetensors_and_bin(self, hf_folders, tmp_path, swiglu):
        folder, hf = hf_folders[True, swiglu]
        sd = safetensors_torch.load_file(str(folder / "model.safetensors"))
        old = _to_old_names(sd)
        assert any("attention.attention.query" in k for k in old)
        (tmp_path / "st").mkdir()
        (tmp_path / "bin").mkdir()
        for d in ("st", "bin"):
            (tmp_path / d / "config.json").write_text((folder / "config.json").read_text())
        safetensors_torch.save_file(
            {k: v.contiguous() for k, v in old.items()}, str(tmp_path / "st" / "model.safetensors")
        )
        torch.save(old, tmp_path / "bin" / "pytorch_model.bin")
        for d in ("st", "bin"):
            vit = load_vit(tmp_path / d, interpolate="hf")
            assert _compare(vit, hf, (42, 70), 4) <= 1e-5


# -------------------------------------------------------------- official layout
def _official_state_dict(dim=128, depth=3, patch=14, m=4, registers=0, swiglu=False, seed=0):
    """An official DINOv2 state dict written from the key list of
    facebookresearch/dinov2 (block_chunks=0), with random tensors."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, base=0.0):
        return 0.3 * torch.randn(*shape, generator=g) + base

    sd = {
        "cls_token": r(1, 1, dim),
        "pos_embed": r(1, 1 + m * m, dim),
        "mask_token": r(1, dim),
        "patch_embed.proj.weight": r(dim, 3, patch, patch),
        "patch_embed.proj.bias": r(dim),
        "norm.weight": r(dim, base=1.0),
        "norm.bias": r(dim),
    }
    if registers:
        sd["register_tokens"] = r(1, registers, dim)
    hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8 if swiglu else 4 * dim
    for i in range(depth):
        b = f"blocks.{i}."
        sd |= {
            b + "norm1.weight": r(dim, base=1.0),
            b + "norm1.bias": r(dim),
            b + "attn.qkv.weight": r(3 * dim, dim),
            b + "attn.qkv.bias": r(3 * dim),
            b + "attn.proj.weight": r(dim, dim),
            b + "attn.proj.bias": r(dim),
            b + "ls1.gamma": r(dim, base=1.0),
            b + "norm2.weight": r(dim, base=1.0),
            b + "norm2.bias": r(dim),
            b + "ls2.gamma": r(dim, base=1.0),
        }
        if swiglu:
            sd |= {
                b + "mlp.w12.weight": r(2 * hidden, dim),
                b + "mlp.w12.bias": r(2 * hidden),
                b + "mlp.w3.weight": r(dim, hidden),
                b + "mlp.w3.bias": r(dim),
            }
        else:
            sd |= {
                b + "mlp.fc1.weight": r(hidden, dim),
                b + "mlp.fc1.bias": r(hidden),
                b + "mlp.fc2.weight": r(dim, hidden),
                b + "mlp.fc2.bias": r(dim),
            }
    return sd


def _official_to_hf(sd, depth):
    """Inverse mapping written independently of geo3d's converter (split qkv and w12)."""
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.mask_token": sd["mask_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    if "register_tokens" in sd:
        out["embeddings.register_tokens"] = sd["register_tokens"]
    for i in range(depth):
        o, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for leaf in ("weight", "bias"):
            q, k, v = sd[o + "attn.qkv." + leaf].chunk(3, 0)
            out |= {
                h + "attention.q_proj." + leaf: q,
                h + "attention.k_proj." + leaf: k,
                h + "attention.v_proj." + leaf: v,
                h + "attention.o_proj." + leaf: sd[o + "attn.proj." + leaf],
                h + "norm1." + leaf: sd[o + "norm1." + leaf],
                h + "norm2." + leaf: sd[o + "norm2." + leaf],
            }
            if o + "mlp.w12.weight" in sd:
                gate, up = sd[o + "mlp.w12." + leaf].chunk(2, 0)
                out |= {
                    h + "mlp.gate_proj." + leaf: gate,
                    h + "mlp.up_proj." + leaf: up,
                    h + "mlp.down_proj." + leaf: sd[o + "mlp.w3." + leaf],
                }
            else:
                out |= {
                    h + "mlp.fc1." + leaf: sd[o + "mlp.fc1." + leaf],
                    h + "mlp.fc2." + leaf: sd[o + "mlp.fc2." + leaf],
                }
        out[h + "layer_scale1.lambda1"] = sd[o + "ls1.gamma"]
        out[h + "layer_scale2.lambda1"] = sd[o + "ls2.gamma"]
    return out


class TestOfficial:
    @pytest.mark.parametrize("registers,swiglu", [(0, False), (4, True)])
    def test_infers_config_and_matches_transformers(self, tmp_path, registers, swiglu):
        sd = _official_state_dict(registers=registers, swiglu=swiglu)
        f = tmp_path / "dinov2_test_pretrain.pth"
        torch.save(sd, f)
        vit = load_vit(f, interpolate="hf")
        assert (vit.embed_dim, len(vit.blocks), vit.num_heads, vit.patch_size, vit.img_size) == (
            128,
            3,
            2,
            14,
            56,
        )
        assert (vit.num_register_tokens, vit.ffn) == (registers, "swiglu" if swiglu else "mlp")
        for k, v in vit.state_dict().items():
            assert torch.equal(v, sd[k]), k
        kw = dict(
            hidden_size=128,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
            use_swiglu_ffn=swiglu,
        )
        hf = (
            tr.Dinov2WithRegistersModel(tr.Dinov2WithRegistersConfig(num_register_tokens=4, **kw))
            if registers
            else tr.Dinov2Model(tr.Dinov2Config(**kw))
        ).eval()
        missing, unexpected = hf.load_state_dict(_official_to_hf(sd, 3), strict=True)
        for hw in ((56, 56), (42, 70)):
            assert _compare(vit, hf, hw, registers) <= 1e-5

    def test_official_interpolation_end_to_end(self, tmp_path):
        # the official path == transformers with its interpolation replaced by the official
        # formula (the independent implementation in test_vit.py)
        _official_reference = _test_vit_module()._official_reference

        sd = _official_state_dict()
        f = tmp_path / "w.pth"
        torch.save(sd, f)
        vit = load_vit(f).double()
        kw = dict(
            hidden_size=128,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
        )
        hf = tr.Dinov2Model(tr.Dinov2Config(**kw)).eval()
        hf.load_state_dict(_official_to_hf(sd, 3))
        hf.double()
        emb = hf.embeddings

        def official(embeddings, height, width):
            return _official_reference(
                emb.position_embeddings.detach(), (height // 14, width // 14), False
            )

        emb.interpolate_pos_encoding = official
        for hw in ((28, 70), (70, 98)):
            assert _compare(vit, hf, hw, 0, dtype=torch.float64) <= 1e-10

    def test_wrapped_chunked_and_heads_override(self, tmp_path):
        sd = _official_state_dict(dim=64, depth=2)
        chunked = {k.replace("blocks.", "blocks.0."): v for k, v in sd.items()}
        f = tmp_path / "ckpt.pth"
        torch.save({"teacher": {"backbone." + k: v for k, v in chunked.items()}}, f)
        vit = load_vit(f, num_heads=2)
        assert (len(vit.blocks), vit.num_heads) == (2, 2)
        assert torch.equal(vit.blocks[1].attn.qkv.weight, sd["blocks.1.attn.qkv.weight"])
        assert load_vit(f).num_heads == 1  # default: 64-dim heads

    def test_unexpected_and_missing_keys_named(self, tmp_path):
        sd = _official_state_dict(dim=64, depth=1)
        sd["blocks.0.attn.extra.weight"] = torch.zeros(2)
        torch.save(sd, tmp_path / "a.pth")
        with pytest.raises(ValueError, match=r"unexpected keys: blocks\.0\.attn\.extra\.weight"):
            load_vit(tmp_path / "a.pth")
        sd.pop("blocks.0.attn.extra.weight")
        sd.pop("norm.bias")
        torch.save(sd, tmp_path / "b.pth")
        with pytest.raises(ValueError, match=r"missing keys: norm\.bias"):
            load_vit(tmp_path / "b.pth")
        vit = load_vit(tmp_path / "b.pth", strict=False)
        assert torch.equal(vit.norm.bias, torch.zeros(64))

    def test_hf_unexpected_key_named(self):
        with pytest.raises(ValueError, match=r"classifier\.weight"):
            hf_to_official_state_dict(
                {
                    "embeddings.cls_token": torch.zeros(1, 1, 4),
                    "classifier.weight": torch.zeros(2, 4),
                }
            )

    def test_bad_paths(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="path"):
            load_vit(tmp_path / "nope.pth")
        with pytest.raises(ValueError, match="config.json"):
            load_vit(tmp_path)
        (tmp_path / "config.json").write_text('{"model_type": "vit"}')
        with pytest.raises(ValueError, match="model_type"):
            load_vit(tmp_path)
        torch.save([1, 2], tmp_path / "list.pth")
        with pytest.raises(ValueError, match="path"):
            load_vit(tmp_path / "list.pth")


@pytest.mark.parametrize("factory", [vit_small, vit_base, vit_large, vit_giant2])
def test_infers_every_dinov2_size(factory):
    # meta tensors: the official S/B/L/g layouts (registers, SwiGLU for g) without memory
    ref = factory(device="meta", num_register_tokens=4)
    vit = vit_from_state_dict(ref.state_dict())
    assert (
        vit.embed_dim,
        len(vit.blocks),
        vit.num_heads,
        vit.ffn,
        vit.num_register_tokens,
        vit.img_size,
    ) == (ref.embed_dim, len(ref.blocks), ref.num_heads, ref.ffn, 4, 518)
    assert vit.blocks[0].mlp.state_dict().keys() == ref.blocks[0].mlp.state_dict().keys()
    assert [p.shape for p in vit.parameters()] == [p.shape for p in ref.parameters()]


def _test_vit_module():
    spec = importlib.util.spec_from_file_location(
        "_geo3d_test_vit", Path(__file__).with_name("test_vit.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class TestUnreadableFiles:
    """Every way a weight file can be broken ends in a ValueError that names the file
    (and, for shapes, the key with expected and actual shape), chaining the reader's error."""

    def _check(self, path, match, named=None):
        """load_vit(path) raises ValueError matching ``match``, naming the file ``named``
        (default ``path``), with the reader's error chained."""
        named = path if named is None else named
        with pytest.raises(ValueError, match=match) as info:
            load_vit(path)
        assert str(named) in str(info.value)
        assert info.value.__cause__ is not None
        return info.value

    def test_wrong_tensor_shape_names_key_and_shapes(self, tmp_path):
        sd = _official_state_dict(dim=64, depth=1)
        sd["blocks.0.attn.qkv.weight"] = torch.zeros(5, 5)
        f = tmp_path / "shape.pth"
        torch.save(sd, f)
        err = self._check(f, r"blocks\.0\.attn\.qkv\.weight: expected shape \(192, 64\)")
        assert "(5, 5)" in str(err)
        sd = _official_state_dict(dim=64, depth=1)
        sd["cls_token"] = torch.zeros(64)  # wrong rank of a tensor the size is read from
        torch.save(sd, f)
        self._check(f, r"cls_token: expected a 3-d tensor, got shape \(64,\)")

    def test_truncated_and_garbage_pth(self, tmp_path):
        good = tmp_path / "good.pth"
        torch.save(_official_state_dict(dim=64, depth=1), good)
        data = good.read_bytes()
        trunc = tmp_path / "trunc.pth"
        trunc.write_bytes(data[: len(data) // 2])
        self._check(trunc, "cannot be read")
        junk = tmp_path / "junk.pth"
        junk.write_bytes(b"\x00\x01not a checkpoint at all" * 10)
        self._check(junk, "cannot be read")
        empty = tmp_path / "empty.pth"
        empty.write_bytes(b"")
        self._check(empty, "cannot be read")
        # a pickled object (refused by weights_only=True): torch's advice to load it with
        # weights_only=False (arbitrary code) must not be passed on
        evil = tmp_path / "evil.pth"
        torch.save({"x": ValueError("obj")}, evil)
        err = self._check(evil, "cannot be read")
        assert "weights_only=False" not in str(err) and "UnpicklingError" in str(err)

    def test_bad_config_json(self, tmp_path):
        (tmp_path / "config.json").write_text('{"model_type": "dinov2",')
        self._check(tmp_path, "expected a JSON file", tmp_path / "config.json")
        (tmp_path / "config.json").write_text("[1, 2]")
        with pytest.raises(ValueError, match="config.json"):
            load_vit(tmp_path)

    def test_junk_safetensors_and_bin(self, hf_folders, tmp_path):
        src, _ = hf_folders[False, False]
        (tmp_path / "config.json").write_bytes((src / "config.json").read_bytes())
        st = tmp_path / "model.safetensors"
        st.write_bytes(b"junk" * 8)
        self._check(tmp_path, "expected a safetensors file", st)
        data = (src / "model.safetensors").read_bytes()
        st.write_bytes(data[: len(data) // 2])  # truncated
        self._check(tmp_path, "expected a safetensors file", st)
        st.unlink()
        binf = tmp_path / "pytorch_model.bin"
        binf.write_bytes(b"garbage bytes")
        self._check(tmp_path, "expected a torch checkpoint", binf)

    def test_bad_sharded_index(self, hf_folders, tmp_path):
        src, _ = hf_folders[False, False]
        (tmp_path / "config.json").write_bytes((src / "config.json").read_bytes())
        idx = tmp_path / "model.safetensors.index.json"
        idx.write_text("{not json")
        self._check(tmp_path, "expected a JSON file", idx)
        idx.write_text('{"metadata": {}}')
        with pytest.raises(ValueError, match="weight_map") as info:
            load_vit(tmp_path)
        assert str(idx) in str(info.value)
        idx.write_text('{"weight_map": {"layernorm.weight": "model-00001.safetensors"}}')
        with pytest.raises(FileNotFoundError, match="model-00001.safetensors"):
            load_vit(tmp_path)

    def test_shape_error_in_hf_folder_names_folder(self, hf_folders, tmp_path):
        src, hf = hf_folders[False, False]
        (tmp_path / "config.json").write_bytes((src / "config.json").read_bytes())
        sd = {k: v.clone() for k, v in hf.state_dict().items()}
        key = next(
            k for k in sd if k.endswith("attention.q_proj.weight") or k.endswith("query.weight")
        )
        sd[key] = torch.zeros(3, 3)
        safetensors_torch.save_file(sd, str(tmp_path / "model.safetensors"))
        with pytest.raises(ValueError, match="qkv") as info:
            load_vit(tmp_path)
        assert str(tmp_path) in str(info.value)
