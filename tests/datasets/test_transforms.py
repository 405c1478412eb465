"""Seeded, recorded point-cloud transforms (issue: datasets §1)."""

from __future__ import annotations

import math

import pytest
import torch
from geo3d.datasets import (
    Center,
    Compose,
    FarthestPointSubsample,
    Jitter,
    Normalize,
    RandomRotation,
    RandomScale,
    RandomSE3,
    RandomSubsample,
    RandomZRotation,
    haar_rotation,
    sample_generator,
)

DT = torch.float64


def _apply_T(T: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]


def _cloud(*batch, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, n, 3, generator=g, dtype=DT) + 2.0


AFFINE = [RandomRotation(), RandomZRotation(), RandomSE3(0.5), RandomScale(0.5, 2.0),
          RandomScale(0.5, 2.0, anisotropic=True), Center(), Normalize(), Normalize("box")]


class TestRecordedTransform:
    @pytest.mark.parametrize("t", AFFINE, ids=lambda t: repr(t))
    def test_transform_matrix_reproduces_points(self, t):
        x = _cloud(3, 2)
        out = t({"points": x}, torch.Generator().manual_seed(0))
        assert out["points"].shape == x.shape and out["transform"].shape == (3, 2, 4, 4)
        torch.testing.assert_close(out["points"], _apply_T(out["transform"], x),
                                   atol=1e-12, rtol=0)
        assert out["applied"][-1][0] == type(t).__name__

    def test_compose_chains_transforms_and_indices(self):
        x = _cloud(2, n=100)
        t = Compose([Center(), RandomRotation(), RandomSubsample(30), RandomSE3(1.0),
                     FarthestPointSubsample(10), RandomScale()])
        out = t(x, torch.Generator().manual_seed(5))
        idx = out["indices"]
        assert idx.shape == (2, 10)
        orig = torch.gather(x, 1, idx[..., None].expand(2, 10, 3))
        torch.testing.assert_close(out["points"], _apply_T(out["transform"], orig),
                                   atol=1e-12, rtol=0)
        assert [a[0] for a in out["applied"]] == ["Center", "RandomRotation", "RandomSubsample",
                                                   "RandomSE3", "FarthestPointSubsample",
                                                   "RandomScale"]

    def test_center_and_normalize_results(self):
        x = _cloud(4)
        c = Center()(x)["points"]
        torch.testing.assert_close(c.mean(-2), torch.zeros(4, 3, dtype=DT), atol=1e-12, rtol=0)
        n = Normalize()(x)["points"]
        torch.testing.assert_close(n.norm(dim=-1).amax(-1), torch.ones(4, dtype=DT))

    def test_center_respects_mask(self):
        x = _cloud(n=10)
        x[7:] = 100.0
        mask = torch.arange(10) < 7
        out = Center()({"points": x, "mask": mask})
        torch.testing.assert_close(out["points"][:7].mean(0), torch.zeros(3, dtype=DT),
                                   atol=1e-12, rtol=0)

    def test_normals_follow(self):
        # points on the plane z = x with normal (-1, 0, 1)/sqrt(2); after any affine map the
        # transformed normal must stay orthogonal to the transformed plane
        g = torch.Generator().manual_seed(0)
        uv = torch.randn(5, 20, 2, generator=g, dtype=DT)
        pts = torch.stack([uv[..., 0], uv[..., 1], uv[..., 0]], -1)
        nrm = torch.tensor([-1.0, 0.0, 1.0], dtype=DT).div(math.sqrt(2)).expand(5, 20, 3)
        for t in [RandomRotation(), RandomScale(0.3, 3.0, anisotropic=True), RandomSE3()]:
            out = t({"points": pts, "normals": nrm}, g)
            p, n = out["points"], out["normals"]
            torch.testing.assert_close(n.norm(dim=-1), torch.ones(5, 20, dtype=DT))
            tangent = p[:, 1:] - p[:, :1]
            assert (tangent * n[:, 1:]).sum(-1).abs().max() < 1e-10


class TestRotations:
    def test_proper_rotations(self):
        R = haar_rotation(500, generator=torch.Generator().manual_seed(0), dtype=DT)
        torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=DT).expand(500, 3, 3))
        torch.testing.assert_close(torch.linalg.det(R), torch.ones(500, dtype=DT))

    def test_haar_moments(self):
        # Haar on SO(3): E[R] = 0, E[tr R] = 0, E[(tr R)^2] = 1, and the rotation angle has
        # density (1 - cos θ)/π on [0, π], hence E[θ] = π/2 + 2/π
        n = 20000
        R = haar_rotation(n, generator=torch.Generator().manual_seed(1), dtype=DT)
        se = 1 / math.sqrt(n)
        assert R.mean(0).abs().max() < 5 * se
        tr = R.diagonal(dim1=-2, dim2=-1).sum(-1)
        assert abs(tr.mean()) < 5 * se * 1.0
        assert abs((tr**2).mean() - 1) < 5 * se * 2.0
        theta = torch.acos(((tr - 1) / 2).clamp(-1, 1))
        assert abs(theta.mean() - (math.pi / 2 + 2 / math.pi)) < 5 * se * 0.8

    def test_z_rotation_is_about_z_and_uniform(self):
        x = _cloud(4000, n=2)
        out = RandomZRotation()(x, torch.Generator().manual_seed(2))
        torch.testing.assert_close(out["points"][..., 2], x[..., 2])
        angle = out["applied"][0][1]["angle"]
        assert angle.min() >= 0 and angle.max() < 2 * math.pi
        assert abs(torch.cos(angle).mean()) < 0.05 and abs(torch.sin(angle).mean()) < 0.05

    def test_independent_per_leading_index(self):
        out = RandomRotation()(_cloud(2, 3), torch.Generator().manual_seed(0))
        R = out["applied"][0][1]["rotation"].reshape(6, 3, 3)
        assert all(not torch.allclose(R[i], R[j]) for i in range(6) for j in range(i))

    def test_se3_translation_scale(self):
        out = RandomSE3(translation_std=0.0)(_cloud(10), torch.Generator().manual_seed(0))
        assert out["transform"][..., :3, 3].abs().max() == 0


class TestOthers:
    def test_jitter_records_clipped_noise(self):
        x = _cloud(3)
        out = Jitter(sigma=0.1, clip=0.15)(x, torch.Generator().manual_seed(0))
        noise = out["applied"][0][1]["noise"]
        torch.testing.assert_close(out["points"] - x, noise)
        assert noise.abs().max() <= 0.15 and noise.std() > 0.05
        assert "transform" not in out

    def test_random_subsample(self):
        x = _cloud(4, n=50)
        out = RandomSubsample(20)(x, torch.Generator().manual_seed(0))
        idx = out["indices"]
        assert idx.shape == (4, 20)
        assert all(len(set(row.tolist())) == 20 for row in idx)  # no replacement
        torch.testing.assert_close(out["points"], torch.gather(x, 1, idx[..., None].expand(4, 20, 3)))
        up = RandomSubsample(80)(x, torch.Generator().manual_seed(0))  # fewer points: replace
        assert up["points"].shape == (4, 80, 3)

    def test_fps_covers_clusters(self):
        g = torch.Generator().manual_seed(0)
        centers = torch.tensor([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], dtype=DT)
        x = (centers[:, None] + 0.01 * torch.randn(4, 25, 3, generator=g, dtype=DT)).reshape(100, 3)
        out = FarthestPointSubsample(4)(x, g)
        cluster = out["indices"] // 25
        assert sorted(cluster.tolist()) == [0, 1, 2, 3]
        with pytest.raises(ValueError, match="num_points"):
            FarthestPointSubsample(200)(x)

    def test_seeding(self):
        x = _cloud(2)
        t = Compose([RandomRotation(), Jitter(), RandomSubsample(10)])
        a = t(x, sample_generator(0, 1, 7))["points"]
        b = t(x, sample_generator(0, 1, 7))["points"]
        c = t(x, sample_generator(0, 2, 7))["points"]
        d = t(x, sample_generator(0, 1, 8))["points"]
        e = t(x, sample_generator(1, 1, 7))["points"]
        assert torch.equal(a, b)
        assert not torch.equal(a, c) and not torch.equal(a, d) and not torch.equal(a, e)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_dtypes(self, dtype):
        x = _cloud(2).to(dtype)
        out = Compose([RandomSE3(), RandomScale(), Jitter()])(x, torch.Generator().manual_seed(0))
        # the recorded map is float64 whatever the points' dtype (exact large offsets)
        assert out["points"].dtype == dtype and out["transform"].dtype == torch.float64

    def test_bad_input(self):
        with pytest.raises(ValueError, match="points"):
            RandomRotation()(torch.zeros(5, 2))
        with pytest.raises(ValueError, match="normals"):
            RandomRotation()({"points": torch.zeros(5, 3), "normals": torch.zeros(4, 3)})
        with pytest.raises(ValueError, match="sample"):
            RandomRotation()({"pts": torch.zeros(5, 3)})
        with pytest.raises(ValueError, match="low"):
            RandomScale(2.0, 1.0)
        with pytest.raises(ValueError, match="num_points"):
            RandomSubsample(0)
        with pytest.raises(ValueError, match="seed"):
            sample_generator(1.5)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_cuda(self):
        x = _cloud(2).cuda()
        for g in (torch.Generator().manual_seed(0), torch.Generator("cuda").manual_seed(0)):
            out = Compose([RandomSE3(), RandomSubsample(10), FarthestPointSubsample(5),
                           Jitter()])(x, g)
            assert out["points"].device.type == "cuda"


class _Clouds(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return _cloud(n=16, seed=i), i


def test_seeded_dataset_same_for_any_worker_count():
    from geo3d.datasets import SeededTransformDataset
    from torch.utils.data import DataLoader

    ds = SeededTransformDataset(_Clouds(), Compose([RandomRotation(), Jitter(),
                                                    RandomSubsample(8)]), seed=3)

    def run(workers):
        loader = DataLoader(ds, batch_size=2, num_workers=workers,
                            persistent_workers=workers > 0,
                            collate_fn=lambda b: (torch.stack([x[0]["points"] for x in b]),
                                                  [x[1] for x in b]))
        out = []
        for epoch in range(2):
            ds.set_epoch(epoch)
            out.append(torch.cat([pts for pts, _ in loader]))
        ds.set_epoch(0)
        return out

    ref, got = run(0), run(2)
    assert not torch.equal(ref[0], ref[1])
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])
    pts, label = ds[4]
    assert label == 4 and pts["points"].shape == (8, 3)
    with pytest.raises(ValueError, match="seed"):
        SeededTransformDataset(_Clouds(), Jitter(), seed=None)


def test_center_and_normalize_are_se3_equivariant():
    from geo3d.groups import SE3
    from geo3d.reps import Points, Vector
    from geo3d.testing import assert_equivariant

    g = torch.Generator().manual_seed(0)
    pts = _cloud(2, n=30)
    for t in (Center(), Normalize()):
        assert_equivariant(lambda x, t=t: t(x)["points"], SE3(), Points(SE3()),
                           Vector(SE3()), inputs=(pts,), atol=1e-9, generator=g)


class TestRandomScaleRange:
    @pytest.mark.parametrize("anisotropic", [False, True])
    def test_draws_fill_exactly_low_to_high(self, anisotropic):
        """The lower bound matters: with [0.5, 0.6] every factor lies in the range and
        the draws reach both ends (a scale of high * u, or ignoring low, falls below)."""
        x = torch.ones(4000, 1, 3, dtype=DT)
        out = RandomScale(0.5, 0.6, anisotropic=anisotropic)(x, torch.Generator().manual_seed(0))
        s = out["applied"][-1][1]["scale"]  # (4000, 3)
        torch.testing.assert_close(out["points"][:, 0], s, atol=0, rtol=0)  # x = 1
        assert float(s.min()) >= 0.5 and float(s.max()) <= 0.6
        assert float(s.min()) < 0.5 + 1e-3 and float(s.max()) > 0.6 - 1e-3
        # uniform on [0.5, 0.6]: mean 0.55, sd 0.1 / sqrt(12); 4000 draws -> se 4.6e-4
        assert abs(float(s.mean()) - 0.55) < 3e-3
        if not anisotropic:
            assert torch.equal(s[:, 0], s[:, 1]) and torch.equal(s[:, 0], s[:, 2])
        else:
            assert not torch.equal(s[:, 0], s[:, 1])


class TestLargeCoordinates:
    @pytest.mark.parametrize("t", [Center(), Normalize(), Normalize("box")], ids=repr)
    def test_float32_far_from_the_origin(self, t):
        """Centring/normalising a float32 cloud at (1e5, -1e5, 5e4) happens in float64:
        the result equals the float64 computation on the same float32 values (float32
        arithmetic would cancel ~1e-2 of a unit-size shape), and the recorded float64
        transform reproduces it."""
        g = torch.Generator().manual_seed(0)
        local = torch.randn(2, 300, 3, generator=g, dtype=DT) * 0.5
        x32 = (local + torch.tensor([1e5, -1e5, 5e4], dtype=DT)).float()
        out = t({"points": x32})
        ref = t({"points": x32.double()})
        assert out["points"].dtype == torch.float32
        assert (out["points"].double() - ref["points"]).abs().max() < 1e-6
        assert out["transform"].dtype == torch.float64
        assert (_apply_T(out["transform"], x32.double()) - out["points"].double()).abs().max() \
            < 1e-6


class TestNoAliasing:
    @pytest.mark.parametrize("t", [*AFFINE, Jitter(), RandomSubsample(5), Compose([])],
                             ids=repr)
    def test_output_never_shares_memory_with_the_input(self, t):
        x = _cloud(2, n=16).transpose(-1, -2).contiguous().transpose(-1, -2)  # column-major
        nrm = torch.nn.functional.normalize(_cloud(2, n=16, seed=1), dim=-1)
        mask = torch.ones(2, 16, dtype=torch.bool)
        sample = {"points": x, "normals": nrm, "mask": mask,
                  "applied": [("Earlier", {"r": torch.eye(3)})]}
        before = {k: v.clone() for k, v in sample.items() if isinstance(v, torch.Tensor)}
        out = t(sample, torch.Generator().manual_seed(0))
        for v in (out["points"], out["normals"], out["mask"], out["applied"][0][1]["r"]):
            v.zero_() if v.dtype != torch.bool else v.logical_not_()
        for k, v in before.items():
            assert torch.equal(sample[k], v), k
        assert torch.equal(sample["applied"][0][1]["r"], torch.eye(3))
