"""Mesh / point-cloud I/O, surface sampling and normalisation (issue: datasets §1)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from geo3d.datasets import (
    MeshReadError,
    PointCloudReadError,
    load_mesh,
    load_mesh_tensors,
    load_point_cloud,
    normalize_points,
    sample_surface,
    save_mesh,
    save_point_cloud,
)


def _box():
    import trimesh

    return trimesh.creation.box(extents=(2.0, 1.0, 0.5))


def _box_surface_distance(p: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """Distance of points to the surface of the centred box with half extents."""
    q = p.abs() - half
    outside = q.clamp_min(0).norm(dim=-1)
    inside = q.max(dim=-1).values.clamp_max(0)
    return (outside + inside).abs()


class TestMeshIO:
    @pytest.mark.parametrize("ext", ["obj", "ply", "off", "stl", "glb"])
    def test_roundtrip(self, tmp_path, ext):
        box = _box()
        path = tmp_path / f"box.{ext}"
        save_mesh(path, box)
        back = load_mesh(path)
        assert math.isclose(back.area, box.area, rel_tol=1e-6)
        assert math.isclose(abs(back.volume), box.volume, rel_tol=1e-6)
        np.testing.assert_allclose(back.bounds, box.bounds, atol=1e-6)
        assert not [f for f in os.listdir(tmp_path) if f != path.name]  # no temp left

    def test_save_from_tensors(self, tmp_path):
        box = _box()
        v = torch.as_tensor(box.vertices)
        f = torch.as_tensor(box.faces)
        save_mesh(tmp_path / "b.ply", vertices=v, faces=f)
        v2, f2 = load_mesh_tensors(tmp_path / "b.ply")
        assert v2.dtype == torch.float64 and f2.dtype == torch.long
        torch.testing.assert_close(v2, v.double())
        assert torch.equal(f2, f.long())

    def test_atomic_write_keeps_old_file_on_failure(self, tmp_path, monkeypatch):
        path = tmp_path / "b.obj"
        save_mesh(path, _box())
        before = path.read_bytes()

        def boom(*a, **k):
            raise OSError("disk full")

        monkeypatch.setattr(os, "replace", boom)
        import trimesh

        with pytest.raises(OSError, match="disk full"):
            save_mesh(path, trimesh.creation.icosphere())
        assert path.read_bytes() == before
        assert os.listdir(tmp_path) == ["b.obj"]

    def test_missing_empty_garbage(self, tmp_path):
        with pytest.raises(MeshReadError, match="does not exist") as e:
            load_mesh(tmp_path / "nope.obj")
        assert e.value.path.endswith("nope.obj")
        (tmp_path / "z.obj").write_bytes(b"")
        with pytest.raises(MeshReadError, match="empty"):
            load_mesh(tmp_path / "z.obj")
        (tmp_path / "g.obj").write_bytes(bytes(range(256)) * 8)
        with pytest.raises(MeshReadError):
            load_mesh(tmp_path / "g.obj")
        (tmp_path / "g2.obj").write_text("v 1 2\nf 9 9 9\n")
        with pytest.raises(MeshReadError):
            load_mesh(tmp_path / "g2.obj")
        (tmp_path / "x.abc").write_text("v 0 0 0\n")
        with pytest.raises(MeshReadError, match="extension"):
            load_mesh(tmp_path / "x.abc")

    def test_bad_arguments(self, tmp_path):
        with pytest.raises(ValueError, match="path"):
            save_mesh(tmp_path / "b.xyz", _box())
        with pytest.raises(ValueError, match="faces"):
            save_mesh(tmp_path / "b.obj", vertices=torch.zeros(3, 3), faces=torch.zeros(3, 2))


class TestPointCloudIO:
    @pytest.mark.parametrize("ext", ["ply", "xyz"])
    def test_roundtrip_with_normals(self, tmp_path, ext, generator):
        pts = torch.randn(50, 3, generator=generator, dtype=torch.float64)
        nrm = torch.nn.functional.normalize(torch.randn(50, 3, generator=generator,
                                                        dtype=torch.float64), dim=-1)
        save_point_cloud(tmp_path / f"p.{ext}", pts, nrm)
        p2, n2 = load_point_cloud(tmp_path / f"p.{ext}", dtype=torch.float64)
        torch.testing.assert_close(p2, pts, atol=1e-12, rtol=0)
        torch.testing.assert_close(n2, nrm, atol=1e-12, rtol=0)
        save_point_cloud(tmp_path / f"q.{ext}", pts)
        p3, n3 = load_point_cloud(tmp_path / f"q.{ext}")
        assert n3 is None and p3.dtype == torch.float32
        torch.testing.assert_close(p3, pts.float())

    @pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian"])
    @pytest.mark.parametrize("with_normals", [False, True])
    @pytest.mark.parametrize("with_faces", [False, True])
    def test_handwritten_ply(self, tmp_path, fmt, with_normals, with_faces):
        # written here byte by byte (not by save_point_cloud/trimesh): trimesh keeps ASCII vertex
        # data as a dict of columns, binary data as a structured array; both must be read
        pts = np.array([[0.0, 0.0, 0.0], [1.5, -2.0, 0.25], [0.0, 1.0, 0.5]], dtype=np.float32)
        nrm = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.6, 0.0, 0.8]], dtype=np.float32)
        cols = ["x", "y", "z"] + (["nx", "ny", "nz"] if with_normals else [])
        data = np.concatenate([pts, nrm], axis=1) if with_normals else pts
        header = ["ply", f"format {fmt} 1.0", "element vertex 3"]
        header += [f"property float {c}" for c in cols]
        if with_faces:
            header += ["element face 0", "property list uchar int vertex_indices"]
        header += ["end_header"]
        body = ("\n".join(" ".join(repr(float(v)) for v in row) for row in data) + "\n").encode()
        if fmt != "ascii":
            body = data.astype("<f4").tobytes()
        (tmp_path / "h.ply").write_bytes(("\n".join(header) + "\n").encode() + body)
        p, n = load_point_cloud(tmp_path / "h.ply", dtype=torch.float64)
        torch.testing.assert_close(p, torch.from_numpy(pts).double(), atol=0, rtol=0)
        if with_normals:
            torch.testing.assert_close(n, torch.from_numpy(nrm).double(), atol=0, rtol=0)
        else:
            assert n is None

    def test_pcd_roundtrip(self, tmp_path, generator, open3d_module):
        pts = torch.randn(40, 3, generator=generator, dtype=torch.float64)
        nrm = torch.nn.functional.normalize(torch.randn(40, 3, generator=generator,
                                                        dtype=torch.float64), dim=-1)
        save_point_cloud(tmp_path / "p.pcd", pts, nrm)
        p2, n2 = load_point_cloud(tmp_path / "p.pcd", dtype=torch.float64)
        torch.testing.assert_close(p2, pts, atol=1e-6, rtol=0)
        torch.testing.assert_close(n2, nrm, atol=1e-6, rtol=0)
        assert os.listdir(tmp_path) == ["p.pcd"]

    def test_errors(self, tmp_path):
        with pytest.raises(FileNotFoundError):
            load_point_cloud(tmp_path / "none.ply")
        with pytest.raises(ValueError, match="points"):
            save_point_cloud(tmp_path / "p.ply", torch.zeros(4, 2))
        with pytest.raises(ValueError, match="normals"):
            save_point_cloud(tmp_path / "p.ply", torch.zeros(4, 3), torch.zeros(5, 3))
        with pytest.raises(ValueError, match="path"):
            save_point_cloud(tmp_path / "p.stl", torch.zeros(4, 3))


def _good_file(tmp_path, ext):
    """A valid file of each format (point clouds for .xyz/.pcd, a box mesh otherwise)."""
    path = tmp_path / f"good.{ext}"
    if ext in ("xyz", "pcd"):
        pts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]] * 8,
                           dtype=torch.float64) + 0.125 * torch.arange(32.0)[:, None]
        save_point_cloud(path, pts)
    else:
        save_mesh(path, _box())
    return path


def _nan_file(tmp_path, ext):
    """A file of the format whose data holds a NaN coordinate."""
    path = tmp_path / f"nan.{ext}"
    if ext == "xyz":
        path.write_text("0 0 0\n1 0 0\nnan 1 0\n0 0 1\n")
    elif ext == "pcd":
        path.write_text("# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\n"
                        "COUNT 1 1 1\nWIDTH 3\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 3\n"
                        "DATA ascii\n0 0 0\nnan 1 0\n0 0 1\n")
    else:
        box = _box()
        v = np.array(box.vertices)
        v[0, 1] = np.nan
        save_mesh(path, vertices=v, faces=np.array(box.faces))
    return path


_CLOUD_EXTS = ["ply", "xyz", "pcd", "obj", "off"]
_MESH_EXTS = ["obj", "ply", "off", "stl", "glb"]


class TestUnreadableFiles:
    """Every reader: a file that does not parse, or parses to empty or non-finite data,
    raises an error that names the file (never an empty or NaN result)."""

    @pytest.mark.parametrize("kind", ["zero", "garbage", "truncated", "nan"])
    @pytest.mark.parametrize("ext", _CLOUD_EXTS)
    def test_load_point_cloud(self, tmp_path, ext, kind, request):
        if ext == "pcd":
            request.getfixturevalue("open3d_module")
        good = _good_file(tmp_path, ext)
        assert load_point_cloud(good)[0].shape[0] >= 4  # the fixture itself reads
        path = tmp_path / f"{kind}.{ext}"
        if kind == "zero":
            path.write_bytes(b"")
        elif kind == "garbage":
            path.write_bytes(bytes(range(256)) * 4)
        elif kind == "truncated":
            data = good.read_bytes()
            if ext in ("xyz", "obj", "off"):
                # text: cut inside a line, so that a column/row is missing
                path.write_bytes(data[: data.index(b"\n", len(data) // 2) - 3] + b"\n")
            else:
                path.write_bytes(data[: len(data) * 2 // 3])
        else:
            path = _nan_file(tmp_path, ext)
        if ext in ("obj",) and kind == "truncated":
            # an OBJ cut inside a line is still a valid OBJ with fewer vertices (documented)
            pts, _ = load_point_cloud(path)
            assert 0 < pts.shape[0] < load_point_cloud(good)[0].shape[0]
            assert torch.isfinite(pts).all()
            return
        with pytest.raises(PointCloudReadError, match=path.name) as e:
            load_point_cloud(path)
        assert e.value.path == str(path)

    @pytest.mark.parametrize("kind", ["zero", "garbage", "truncated", "nan"])
    @pytest.mark.parametrize("ext", _MESH_EXTS)
    def test_load_mesh(self, tmp_path, ext, kind):
        good = _good_file(tmp_path, ext)
        assert len(load_mesh(good).faces) == 12
        path = tmp_path / f"{kind}.{ext}"
        if kind == "zero":
            path.write_bytes(b"")
        elif kind == "garbage":
            path.write_bytes(bytes(range(256)) * 4)
        elif kind == "truncated":
            data = good.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        else:
            path = _nan_file(tmp_path, ext)
        try:
            mesh = load_mesh(path)
        except MeshReadError as err:
            assert err.path == str(path) and path.name in str(err)
            return
        # a text mesh cut in half can still parse (fewer faces); it must then be finite and
        # smaller -- never silently the same mesh or one with NaN vertices
        assert kind == "truncated" and ext in ("obj", "off")
        assert np.isfinite(mesh.vertices).all() and len(mesh.faces) < 12

    def test_xyz_with_too_few_columns(self, tmp_path):
        (tmp_path / "two.xyz").write_text("1 2\n3 4\n")
        with pytest.raises(PointCloudReadError, match="two.xyz.*3 columns"):
            load_point_cloud(tmp_path / "two.xyz")

    def test_non_finite_normals(self, tmp_path):
        (tmp_path / "n.xyz").write_text("0 0 0 0 0 1\n1 0 0 inf 0 1\n")
        with pytest.raises(PointCloudReadError, match="n.xyz.*normals"):
            load_point_cloud(tmp_path / "n.xyz")


_PCD_HEAD = ("# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
             "WIDTH 10\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 10\n")


class TestPcdLayout:
    """open3d reads a PCD whose body is shorter than its header says as POINTS rows, the
    missing ones zeros or garbage (only a warning): the header is checked here."""

    @pytest.mark.parametrize("rows", [2, 9, 11])
    def test_ascii_row_count_differs_from_header(self, tmp_path, rows, open3d_module):
        path = tmp_path / "t.pcd"
        path.write_text(_PCD_HEAD + "DATA ascii\n" + "1 1 1\n" * rows)
        with pytest.raises(PointCloudReadError,
                           match=rf"t\.pcd.*POINTS 10, but {rows} data row") as e:
            load_point_cloud(path)
        assert e.value.path == str(path)

    def test_ascii_exact_rows_read(self, tmp_path, open3d_module):
        path = tmp_path / "t.pcd"
        rows = np.arange(30, dtype=np.float64).reshape(10, 3) / 4  # exact in float32
        path.write_text(_PCD_HEAD + "DATA ascii\n" +
                        "".join(" ".join(repr(float(v)) for v in r) + "\n" for r in rows) + "\n")
        pts, _ = load_point_cloud(path, dtype=torch.float64)
        assert torch.equal(pts, torch.from_numpy(rows))

    @pytest.mark.parametrize("row", ["1 1", "1 x 1", "np.float64(1.0) 1 1"])
    def test_ascii_row_that_does_not_parse(self, tmp_path, row, open3d_module):
        # open3d reads these as zeros (or shifts columns) without an error
        path = tmp_path / "t.pcd"
        path.write_text(_PCD_HEAD + "DATA ascii\n" + "1 1 1\n" * 9 + row + "\n")
        with pytest.raises(PointCloudReadError, match=r"t\.pcd.*(parse|value\(s\) per row)"):
            load_point_cloud(path)

    def test_binary_bytes_short_of_header(self, tmp_path, open3d_module):
        body = np.arange(30, dtype="<f4").tobytes()
        full, cut = tmp_path / "full.pcd", tmp_path / "cut.pcd"
        full.write_bytes(_PCD_HEAD.encode() + b"DATA binary\n" + body)
        cut.write_bytes(_PCD_HEAD.encode() + b"DATA binary\n" + body[:-4])
        assert torch.equal(load_point_cloud(full)[0], torch.arange(30.0).reshape(10, 3))
        with pytest.raises(PointCloudReadError,
                           match=r"cut\.pcd.*120 bytes.*only 116 bytes"):
            load_point_cloud(cut)

    def test_header_without_data_line(self, tmp_path, open3d_module):
        path = tmp_path / "h.pcd"
        path.write_text(_PCD_HEAD)
        with pytest.raises(PointCloudReadError, match=r"h\.pcd.*no DATA line"):
            load_point_cloud(path)


class TestFiniteAfterCast:
    """Kind: every reader that casts checks finiteness after the cast (3e38 < 1e39:
    finite in float64, inf in float32)."""

    def test_load_point_cloud_overflow(self, tmp_path):
        path = tmp_path / "big.xyz"
        path.write_text("0 0 0\n1e39 0 0\n0 1 0\n")
        with pytest.raises(PointCloudReadError, match=r"big\.xyz.*non-finite.*row 1"):
            load_point_cloud(path)  # float32 default
        pts, _ = load_point_cloud(path, dtype=torch.float64)
        assert pts[1, 0].item() == 1e39

    def test_load_mesh_tensors_overflow(self, tmp_path):
        box = _box()
        v = np.array(box.vertices) * 1e39
        save_mesh(tmp_path / "big.obj", vertices=v, faces=np.array(box.faces))
        with pytest.raises(MeshReadError, match=r"big\.obj.*not finite in torch\.float32"):
            load_mesh_tensors(tmp_path / "big.obj", dtype=torch.float32)
        v64, _ = load_mesh_tensors(tmp_path / "big.obj")
        assert torch.equal(v64, torch.from_numpy(v))


class TestSampleSurface:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_points_on_surface_with_face_normals(self, dtype, generator):
        box = _box()
        v = torch.as_tensor(box.vertices, dtype=dtype)
        f = torch.as_tensor(box.faces)
        pts, nrm, face = sample_surface(v, f, 2000, generator=generator)
        assert pts.shape == (2000, 3) and nrm.shape == (2000, 3) and face.shape == (2000,)
        assert pts.dtype == dtype and nrm.dtype == dtype
        half = torch.tensor([1.0, 0.5, 0.25], dtype=dtype)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert _box_surface_distance(pts, half).max() < tol
        expected_n = torch.as_tensor(np.array(box.face_normals), dtype=dtype)[face]
        torch.testing.assert_close(nrm, expected_n, atol=tol, rtol=0)

    def test_area_weighting_and_uniformity(self):
        # two triangles with areas 1/2 and 3/2: expect 25% / 75% of the samples
        v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0],
                          [0, 0, 1], [3, 0, 1], [0, 1, 1]], dtype=torch.float64)
        f = torch.tensor([[0, 1, 2], [3, 4, 5]])
        n = 40000
        pts, _, face = sample_surface(v, f, n, generator=torch.Generator().manual_seed(1))
        frac = (face == 0).double().mean().item()
        assert abs(frac - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)
        # uniform inside a triangle: mean of the samples = the triangle's centroid
        mean0 = pts[face == 0].mean(0)
        torch.testing.assert_close(mean0, torch.tensor([1 / 3, 1 / 3, 0.0], dtype=torch.float64),
                                   atol=0.01, rtol=0)
        # and points stay inside: barycentric coordinates >= 0
        p = pts[face == 0]
        assert (p[:, 0] >= 0).all() and (p[:, 1] >= 0).all() and (p[:, :2].sum(1) <= 1).all()

    def test_reproducible_and_honours_generator(self):
        box = _box()
        v, f = torch.as_tensor(box.vertices), torch.as_tensor(box.faces)
        a = sample_surface(v, f, 100, generator=torch.Generator().manual_seed(3))[0]
        b = sample_surface(v, f, 100, generator=torch.Generator().manual_seed(3))[0]
        c = sample_surface(v, f, 100, generator=torch.Generator().manual_seed(4))[0]
        assert torch.equal(a, b) and not torch.equal(a, c)

    def test_errors(self):
        v = torch.zeros(3, 3)
        f = torch.tensor([[0, 1, 2]])
        with pytest.raises(ValueError, match="area"):
            sample_surface(v, f, 10)
        with pytest.raises(ValueError, match="vertices"):
            sample_surface(torch.zeros(3, 2), f, 10)
        with pytest.raises(ValueError, match="faces"):
            sample_surface(torch.eye(3), torch.tensor([0, 1, 2]), 10)
        with pytest.raises(ValueError, match="num_points"):
            sample_surface(torch.eye(3), f, -1)

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_cuda(self):
        box = _box()
        v = torch.as_tensor(box.vertices, device="cuda")
        f = torch.as_tensor(box.faces, device="cuda")
        g = torch.Generator(device="cuda").manual_seed(0)
        pts, nrm, _ = sample_surface(v, f, 500, generator=g)
        assert pts.device.type == "cuda"
        assert _box_surface_distance(pts.cpu(), torch.tensor([1.0, 0.5, 0.25],
                                                             dtype=torch.float64)).max() < 1e-9


class TestNormalize:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_sphere(self, dtype, generator):
        pts = (torch.randn(4, 100, 3, generator=generator) * 3 + 5).to(dtype)
        out, center, scale = normalize_points(pts)
        assert center.shape == (4, 3) and scale.shape == (4,)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(out.mean(-2), torch.zeros(4, 3, dtype=dtype), atol=tol, rtol=0)
        torch.testing.assert_close(out.norm(dim=-1).amax(-1), torch.ones(4, dtype=dtype),
                                   atol=tol, rtol=0)
        torch.testing.assert_close(out * scale[:, None, None] + center[:, None], pts,
                                   atol=tol * 10, rtol=0)

    def test_box_and_mask(self, generator):
        pts = torch.rand(2, 50, 3, generator=generator, dtype=torch.float64) * 4 - 1
        mask = torch.ones(2, 50, dtype=torch.bool)
        mask[:, 40:] = False
        pts[:, 40:] = 1e6  # padding must be ignored
        out, center, scale = normalize_points(pts, mask, mode="box")
        valid = out[:, :40]
        assert valid.abs().amax(dim=(-1, -2)).sub(1).abs().max() < 1e-12
        assert (out[:, 40:] == 0).all()
        lo, hi = pts[:, :40].amin(1), pts[:, :40].amax(1)
        torch.testing.assert_close(center, (lo + hi) / 2)

    def test_errors(self):
        with pytest.raises(ValueError, match="points"):
            normalize_points(torch.zeros(5, 2))
        with pytest.raises(ValueError, match="mask"):
            normalize_points(torch.zeros(5, 3), torch.ones(4, dtype=torch.bool))
        with pytest.raises(ValueError, match="mode"):
            normalize_points(torch.zeros(5, 3), mode="cube")


    @pytest.mark.parametrize("mode", ["sphere", "box"])
    def test_float32_far_from_the_origin(self, mode, generator):
        """A unit-size float32 cloud at (1e5, -1e5, 5e4): normalising in float32 would
        cancel ~1e-2 of its shape; the result equals the float64 computation on the same
        float32 values to float32 rounding."""
        local = torch.randn(3, 200, 3, generator=generator, dtype=torch.float64) * 0.5
        pts32 = (local + torch.tensor([1e5, -1e5, 5e4], dtype=torch.float64)).float()
        out, center, scale = normalize_points(pts32, mode=mode)
        ref, c64, s64 = normalize_points(pts32.double(), mode=mode)
        assert out.dtype == center.dtype == torch.float32
        assert (out.double() - ref).abs().max() < 1e-6
        assert (center.double() - c64).abs().max() <= 0.01  # float32 spacing at 1e5

    def test_empty_and_fully_masked_clouds(self):
        out, center, scale = normalize_points(torch.zeros(2, 0, 3))
        assert out.shape == (2, 0, 3) and torch.equal(center, torch.zeros(2, 3))
        assert torch.equal(scale, torch.ones(2))
        pts = torch.full((1, 4, 3), float("nan"))
        for mode in ("sphere", "box"):
            out, center, scale = normalize_points(pts, torch.zeros(1, 4, dtype=torch.bool),
                                                  mode=mode)
            assert torch.equal(out, torch.zeros(1, 4, 3)), mode
            assert torch.equal(center, torch.zeros(1, 3)) and torch.equal(scale, torch.ones(1))

    def test_mask_that_would_broadcast_is_an_error(self):
        with pytest.raises(ValueError, match="mask"):
            normalize_points(torch.zeros(2, 5, 3), torch.ones(1, 5, dtype=torch.bool))
        with pytest.raises(ValueError, match="mask"):
            normalize_points(torch.zeros(2, 5, 3), torch.ones(5, dtype=torch.bool))

    def test_output_never_aliases_input(self):
        x = torch.rand(3, 8).T  # column-major
        before = x.clone()
        for out in normalize_points(x):
            out.add_(1.0)
        assert torch.equal(x, before)
        e = torch.zeros(0, 3)
        normalize_points(e)[0].resize_(5, 3).fill_(1.0)
        assert e.shape == (0, 3)


class TestEquivariance:
    """Sampling and normalisation commute with rigid motions (geo3d.testing)."""

    def test_normalize_points(self):
        from geo3d.groups import O3, SE3
        from geo3d.reps import Points, Vector
        from geo3d.testing import assert_equivariant

        g = torch.Generator().manual_seed(0)
        pts = torch.randn(2, 40, 3, generator=g, dtype=torch.float64)
        assert_equivariant(lambda x: normalize_points(x)[0], SE3(), Points(SE3()),
                           Vector(SE3()), inputs=(pts,), atol=1e-9, generator=g)
        assert_equivariant(lambda x: normalize_points(x)[0], O3(), Vector(O3()),
                           Vector(O3()), inputs=(pts,), atol=1e-9, generator=g)
        # the scale is invariant, the centre moves with the points
        assert_equivariant(lambda x: normalize_points(x)[2], SE3(), Points(SE3()),
                           None, inputs=(pts,), atol=1e-9, generator=g)
        assert_equivariant(lambda x: normalize_points(x)[1], SE3(), Points(SE3()),
                           Points(SE3()), inputs=(pts,), atol=1e-9, generator=g)

    def test_sample_surface(self):
        from geo3d.groups import SE3
        from geo3d.reps import Points, Vector
        from geo3d.testing import assert_equivariant

        box = _box()
        v = torch.as_tensor(np.array(box.vertices))
        f = torch.as_tensor(np.array(box.faces))

        def sample(verts):
            pts, nrm, _ = sample_surface(verts, f, 300, generator=torch.Generator().manual_seed(5))
            return pts, nrm

        assert_equivariant(sample, SE3(), Points(SE3()), (Points(SE3()), Vector(SE3())),
                           inputs=(v,), atol=1e-9, generator=torch.Generator().manual_seed(1))
