"""Assembly networks: the SE(3)-equivariant assembler and the Global baseline.

Both take a batch of objects made of ``P`` (padded) parts of ``N`` points each and return
one pose per part such that ``assembled = rot @ p + trans`` for the part's *input*
points ``p`` (not necessarily centred).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["CorrespondenceHead", "EquivariantAssembler", "GlobalAssembler", "build_encoder",
           "check_parts"]

_IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_GRAM = 16  # VN projections whose Gram matrix forms the invariant part token
_CANON = 128  # width of the PointNet on canonical coordinates ("pca" readout)


def _spread_sixd(k: int) -> Tensor:
    """6D codes (first two columns) of ``k`` well-spread rotations: the 24 rotations of
    the cube first (the axis swaps and flips a principal-axis frame is ambiguous up to),
    then seeded random ones."""
    from geo3d.apps.assembly._canonical import OCTAHEDRAL_ROTATIONS

    rot = OCTAHEDRAL_ROTATIONS.clone()
    if k > len(rot):
        from geo3d.rotations import random_rotation_matrix

        g = torch.Generator().manual_seed(0)
        rot = torch.cat([rot, random_rotation_matrix(k - len(rot), generator=g,
                                                     dtype=torch.float64)])
    rot = rot[:k]
    return torch.cat([rot[..., 0], rot[..., 1]], dim=-1).float()


def check_parts(points: Tensor, valid: Tensor) -> Tensor:
    """Validate ``points (B, P, N, 3)`` / ``valid (B, P)``; return ``valid`` as bool."""
    if not isinstance(points, Tensor) or points.dim() != 4 or points.shape[-1] != 3:
        shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise ValueError(f"points: expected shape (B, P, N, 3), got {shape}")
    if not points.is_floating_point():
        raise ValueError(f"points: expected a floating point tensor, got {points.dtype}")
    B, P = points.shape[:2]
    if not isinstance(valid, Tensor) or valid.shape != (B, P):
        shape = tuple(valid.shape) if isinstance(valid, Tensor) else type(valid).__name__
        raise ValueError(f"valid: expected shape (B, P) = {(B, P)}, got {shape}")
    valid = valid.to(device=points.device, dtype=torch.bool)
    if not bool(valid.any()):
        raise ValueError("valid: expected at least one valid part, got none")
    return valid


def build_encoder(
    name: str,
    feat_dim: int,
    k: int,
    hidden: list[int] | None = None,
    batch_norm: bool = True,
    dynamic_graph: bool = True,
) -> nn.Module:
    """Point-cloud encoder from :mod:`geo3d.nn` by name.

    Args:
        name: ``"vn_dgcnn"``, ``"vn_pointnet"`` (equivariant) or ``"dgcnn"``, ``"pointnet"``.
        feat_dim: output feature width.
        k: neighbours of the DGCNN graphs.
        hidden: block widths (``None``: the encoder's default).
        batch_norm: use (masked) batch norm inside the encoder.
        dynamic_graph: ``"vn_dgcnn"`` recomputes the kNN graph from the features of every
            block (``False``: reuses the coordinate graph, see :class:`geo3d.nn.VNDGCNN`).
    """
    import geo3d.nn as gnn

    kw: dict = {"feat_dim": feat_dim, "batch_norm": batch_norm}
    if hidden is not None:
        kw["hidden"] = tuple(int(h) for h in hidden)
    if name == "vn_dgcnn":
        return gnn.VNDGCNN(k=k, dynamic=dynamic_graph, **kw)
    if name == "vn_pointnet":
        return gnn.VNPointNet(k=k, **kw)
    if name == "dgcnn":
        return gnn.DGCNN(k=k, **kw)
    if name == "pointnet":
        return gnn.PointNet(**kw)
    raise ValueError(
        f"encoder: expected one of 'vn_dgcnn', 'vn_pointnet', 'dgcnn', 'pointnet', got {name!r}"
    )


def _probe(encoder: nn.Module, k: int) -> tuple[int, int]:
    """(equivariant channels or 0, invariant channels) of an encoder, from a tiny forward."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        out = encoder(torch.randn(2, max(k + 2, 8), 3, generator=g))
    encoder.train(was_training)
    c_eq = 0 if out.equivariant is None else int(out.equivariant.shape[1])
    return c_eq, int(out.invariant.shape[1])


def _centre(x: Tensor) -> tuple[Tensor, Tensor]:
    c = x.mean(dim=-2, keepdim=True)
    return x - c, c[..., 0, :]


def pca_frame(x: Tensor) -> tuple[Tensor, Tensor]:
    """Principal-axis frame of centred point clouds, with signs fixed by the third moments.

    Columns: the major, middle and (``e1 × e2``) minor axis. A rotation ``g`` of the
    input rotates the frame, ``E(g x) = g E(x)``, whenever the covariance eigenvalues are
    distinct and the third moments along the first two axes are nonzero (generic for
    fracture pieces). Computed in float64 without gradient (the frame is a function of
    the input geometry only).

    Args:
        x: centred points, shape :math:`(M, N, 3)`.

    Returns:
        ``E`` :math:`(M, 3, 3)` (a rotation) and the axis extents ``sqrt(eigenvalues)``
        :math:`(M, 3)`, descending, both in ``x``'s dtype.
    """
    xd = x.detach().double()
    cov = xd.transpose(-1, -2) @ xd / x.shape[-2]
    evals, evecs = torch.linalg.eigh(cov)  # ascending, columns
    E = evecs.flip(-1)
    third = ((xd @ E[..., :2]) ** 3).sum(-2)  # (M, 2)
    sign = torch.where(third < 0, -1.0, 1.0).to(xd.dtype)
    e1, e2 = E[..., 0] * sign[:, :1], E[..., 1] * sign[:, 1:]
    E = torch.stack([e1, e2, torch.linalg.cross(e1, e2, dim=-1)], dim=-1)
    ext = evals.flip(-1).clamp_min(0).sqrt()
    return E.to(x.dtype), ext.to(x.dtype)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers += [nn.LayerNorm(sizes[i + 1]), nn.GELU()]
    return nn.Sequential(*layers)


def _scatter(x: Tensor, valid: Tensor) -> Tensor:
    """Place rows ``x (M, *F)`` of the valid parts into a zero tensor ``(B, P, *F)``."""
    out = x.new_zeros(valid.shape + x.shape[1:])
    out[valid] = x
    return out


class CorrespondenceHead(nn.Module):
    """Per-point descriptors and fracture-surface logits from per-point features.

    ``h = MLP([point features, part token])``; ``desc = normalize(W_d h)`` (unit L2
    norm), ``frac = w_f · h`` (logit of "this point lies on a fracture surface"). When the
    inputs are rotation invariant (the VN encoder's ``point_features``: inner products of
    per-point VN features with an equivariant frame; the attended invariant part token),
    so are the outputs, exactly (up to rounding).

    Args:
        point_dim: width of the per-point features; token_dim: width of the part token.
        desc_dim: descriptor width ``C``; hidden: MLP width.

    Shape:
        ``point_feats (M, N, point_dim)``, ``token (M, token_dim)`` ->
        ``desc (M, N, C)``, ``frac (M, N)``.
    """

    def __init__(self, point_dim: int, token_dim: int, desc_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(point_dim)
        self.mlp = nn.Sequential(
            nn.Linear(point_dim + token_dim, hidden), nn.LayerNorm(hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.GELU(),
        )
        self.desc = nn.Linear(hidden, desc_dim)
        self.frac = nn.Linear(hidden, 1)

    def forward(self, point_feats: Tensor, token: Tensor) -> tuple[Tensor, Tensor]:
        N = point_feats.shape[1]
        x = torch.cat([self.norm(point_feats), token[:, None].expand(-1, N, -1)], dim=-1)
        h = self.mlp(x)
        desc = torch.nn.functional.normalize(self.desc(h), dim=-1, eps=1e-12)
        return desc, self.frac(h)[..., 0]


class _PoseHeadMixin:
    def _init_heads(self, d: int) -> None:
        self.rot_head = nn.Linear(d, 6)
        self.trans_head = nn.Linear(d, 3)
        with torch.no_grad():  # start at identity rotation, zero translation
            self.rot_head.weight.mul_(0.01)
            self.rot_head.bias.copy_(torch.tensor(_IDENTITY_6D))
            self.trans_head.weight.mul_(0.01)
            self.trans_head.bias.zero_()


class EquivariantAssembler(nn.Module, _PoseHeadMixin):
    """SE(3)-equivariant multi-part assembler (Wu et al., ICCV 2023, redesigned head).

    Per valid part: centre it, encode with a VN encoder into equivariant features
    ``F (C, 3)`` and invariant ``G``. The part's invariant token is ``[Gram matrix of 16
    VN-linear projections of F, |F|, G]`` (exact invariants that need no frame, so they
    stay well conditioned in float32).
    Masked multi-head self-attention over the valid parts of an object lets every part's
    pose depend on all others (padded parts never attend or get attended). From the
    attended invariant token the pose is read out either as ``R = Q Eᵀ`` with a 6D
    rotation ``Q``, a frame ``E`` = the nearest rotation (SVD, det fixed) to three
    VN-linear vectors (columns rotate with the input: ``E(g p) = g E(p)``) and an invariant
    translation ``t`` (``rot_readout="frame"``) or, by default (``"steer"``), as ``R = Sᵀ``
    where ``S`` is the nearest rotation to three vectors ``Σ_c w_kc(token) F_c`` (invariant
    weights steering the equivariant channels; ``S`` holds the assembled frame's axes in
    input coordinates, ``S(g p) = g S(p)``) and ``t = R u + b`` with an equivariant offset
    ``u = Σ_c v_c(token) F_c`` (where the part sits relative to the object, seen from the
    part) and an invariant ``b(token)`` (the same, read in the assembled frame from
    invariants; it lets the model place parts while their rotation is uncertain). The
    ``"pca"`` readout takes ``E`` = the part's principal-axis frame (:func:`pca_frame`, no
    learning: exact for generic parts, whose covariance eigenvalues are distinct), adds the
    VN channels read in that frame (``Fᵀ E``), the axis extents and a PointNet of the
    canonical coordinates ``Eᵀ p`` to the token, and predicts ``hypotheses`` candidate
    poses ``R_k = Q_k Eᵀ``, ``t_k`` with scores; the output is the best-scored one. The
    pose of a fragment in its own principal frame is multimodal (near-equal extents swap
    axes, near-zero third moments flip them): one regressed rotation averages the modes
    into a wrong answer, K hypotheses trained winner-takes-all do not (a PointNet on
    canonical fragment coordinates reached 22% of held-out parts within 15° with 24
    hypotheses and ~1% with one). Either way ``R(g p) = R(p) g⁻¹`` and ``t`` is invariant. Rotating input part ``i`` by ``g``
    therefore gives ``R g⁻¹`` and the same assembled part ``R g⁻¹ (g p) + t``; translating
    it shifts only the centring correction. Exact by construction (up to float rounding
    and knn ties).

    Why three vectors and an SVD rather than Gram–Schmidt of two: VN features are
    O(3)-equivariant, so on a mirror-symmetric input (a chair, a mug) every feature lies in
    the mirror plane and no feature can point along its normal. Gram–Schmidt of two
    features then cannot produce a frame whose first or second axis is that normal; the
    det-fixed SVD can (the missing axis comes out as a cross product, a pseudo-vector).
    In a whole-shape canonicalisation test on such shapes (160 training shapes, 40
    epochs) a VN-PointNet stayed near chance with Gram–Schmidt (~120° geodesic error) and
    reached ~90° with the SVD; a VN-DGCNN with the SVD reached ~60° after 150 epochs.

    Args:
        encoder: ``"vn_dgcnn"`` or ``"vn_pointnet"``.
        feat_dim: encoder width (the paper uses 512 on GPUs).
        k: DGCNN neighbours (paper: 20).
        d_model: width of the attention tokens.
        num_layers: self-attention layers.
        num_heads: attention heads.
        dropout: attention dropout.
        hidden: encoder block widths (``None``: encoder default).
        batch_norm: batch norm inside the encoder.
        rot_readout: ``"steer"`` (default), ``"frame"`` or ``"pca"`` (see above).
        dynamic_graph: VN-DGCNN's feature-space (dynamic) kNN graphs; ``False`` reuses the
            coordinate graph (faster, and float32 rounding can no longer flip near-tied
            neighbours in feature space).
        hypotheses: pose hypotheses per part (``"pca"`` only; the forward output then also
            holds ``hyp_rot (B, P, K, 3, 3)``, ``hyp_trans (B, P, K, 3)`` and
            ``hyp_logits (B, P, K)``, trained with
            :func:`geo3d.apps.assembly._losses.assembly_loss`'s winner-takes-all terms).
        desc_dim: width of the per-point correspondence descriptors (0: no
            correspondence head). With a head the output also holds ``desc (B, P, N, C)``
            (unit vectors, rotation invariant) and ``frac_score (B, P, N)`` (fracture-
            surface logits, invariant), from :class:`CorrespondenceHead` on the encoder's
            invariant ``point_features`` and the attended part token (the pose outputs
            are unchanged). Used by the matching pipeline
            (:func:`geo3d.apps.assembly._pipeline.assemble_from_outputs`).
    """

    def __init__(
        self,
        encoder: str = "vn_dgcnn",
        feat_dim: int = 64,
        k: int = 10,
        d_model: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        dropout: float = 0.0,
        hidden: list[int] | None = None,
        batch_norm: bool = True,
        rot_readout: str = "steer",
        dynamic_graph: bool = True,
        hypotheses: int = 1,
        desc_dim: int = 0,
    ) -> None:
        super().__init__()
        from geo3d.nn import VNLinear

        if rot_readout not in ("steer", "frame", "pca"):
            raise ValueError(
                f"rot_readout: expected 'steer', 'frame' or 'pca', got {rot_readout!r}"
            )
        self.rot_readout = rot_readout
        if not isinstance(hypotheses, int) or hypotheses < 1:
            raise ValueError(f"hypotheses: expected a positive int, got {hypotheses!r}")
        if hypotheses > 1 and rot_readout != "pca":
            raise ValueError(
                f"hypotheses: {hypotheses} needs rot_readout='pca', got {rot_readout!r}"
            )
        self.hypotheses = hypotheses

        self.encoder = build_encoder(encoder, feat_dim, k, hidden, batch_norm, dynamic_graph)
        c_eq, c_inv = _probe(self.encoder, k)
        if c_eq == 0:
            raise ValueError(f"encoder: {encoder!r} has no equivariant output; use a VN encoder")
        self.frame = VNLinear(c_eq, 3) if rot_readout == "frame" else None
        # invariants without a frame (well conditioned): Gram matrix of 16 VN projections
        self.gram = VNLinear(c_eq, _GRAM)
        # "pca": the VN channels read in the part's principal-axis frame (3 C invariants),
        # the axis extents and a PointNet of the canonical coordinates join the token
        n_tok = _GRAM * _GRAM + c_eq + c_inv
        if rot_readout == "pca":
            self.canon = _mlp([3, 64, _CANON])
            n_tok += 3 * c_eq + 3 + _CANON
        self.embed = _mlp([n_tok, d_model, d_model])
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, dim_feedforward=2 * d_model, dropout=dropout,
            batch_first=True, norm_first=True,
        )
        self.mixer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(d_model)
        if not isinstance(desc_dim, int) or desc_dim < 0:
            raise ValueError(f"desc_dim: expected an int >= 0, got {desc_dim!r}")
        self.desc_dim = desc_dim
        self.corr = CorrespondenceHead(3 * c_eq, d_model, desc_dim) if desc_dim else None
        if rot_readout == "frame":
            self._init_heads(d_model)
        elif rot_readout == "pca":
            # K hypotheses (6D rotation in the part's frame, translation, score): the
            # pose of a fragment in its principal-axis frame is multimodal (near-equal
            # extents swap axes, near-zero third moments flip them), which a single
            # regressed rotation averages into a wrong answer
            self.hyp_head = nn.Linear(d_model, hypotheses * 10)
            with torch.no_grad():
                self.hyp_head.weight.mul_(0.1)
                bias = torch.zeros(hypotheses, 10)
                bias[:, :6] = _spread_sixd(hypotheses)
                self.hyp_head.bias.copy_(bias.flatten())
        else:
            # per-part weights (3 x C) from the attended invariant token combine the
            # equivariant channels into three vectors, projected onto SO(3) -> the
            # assembled frame's axes in input coordinates (a static VN linear map gives the
            # initial guess).
            self.steer = nn.Linear(d_model, 3 * c_eq)
            self.steer_static = VNLinear(c_eq, 3)
            # translation: an equivariant offset u (from the part to its place, in the
            # part's input coordinates), mapped by the predicted rotation: t = R u.
            self.steer_t = nn.Linear(d_model, c_eq)
            self.steer_t_static = VNLinear(c_eq, 1)
            # plus an invariant offset in the assembled frame (where the part sits in the
            # object, read from invariants: a hedge while the rotation is uncertain)
            self.steer_t_inv = nn.Linear(d_model, 3)
            with torch.no_grad():
                for lin in (self.steer, self.steer_t, self.steer_t_inv):
                    lin.weight.mul_(0.1)
                    lin.bias.zero_()

    def forward(self, points: Tensor, valid: Tensor) -> dict[str, Tensor]:
        """Predict part poses.

        Args:
            points: part points, shape :math:`(B, P, N, 3)`.
            valid: valid-part mask, shape :math:`(B, P)` bool.

        Returns:
            dict with ``rot (B, P, 3, 3)``, ``trans (B, P, 3)`` (identity / zero on padded
            parts) and ``frame (B, P, 3, 3)`` (the equivariant part frames: ``E`` for
            ``"frame"`` and ``"pca"``, ``S`` for ``"steer"``; ``frame(g p) = g frame(p)``);
            for ``"pca"`` also ``hyp_rot (B, P, K, 3, 3)``, ``hyp_trans (B, P, K, 3)`` and
            ``hyp_logits (B, P, K)`` (``rot``/``trans`` are the best-scored hypothesis).
        """
        from geo3d.rotations import project_to_so3, sixd_to_matrix

        valid = check_parts(points, valid)
        x, c = _centre(points[valid])  # (M, N, 3), (M, 3)
        enc = self.encoder(x)
        F = enc.equivariant  # (M, C, 3)
        Pj = self.gram(F)  # (M, K, 3)
        gram = (Pj @ Pj.transpose(-1, -2)).flatten(1)  # (M, K*K) rotation invariants
        feats = [gram, F.norm(dim=-1), enc.invariant]
        if self.rot_readout == "pca":
            E, ext = pca_frame(x)
            feats += [(F @ E).flatten(1), ext, self.canon(x @ E).amax(dim=1)]
        tok = torch.cat(feats, dim=-1)
        tok = _scatter(self.embed(tok), valid)  # (B, P, D)
        tok = self.out_norm(self.mixer(tok, src_key_padding_mask=~valid))[valid]
        if self.rot_readout == "steer":
            w = self.steer(tok).reshape(-1, 3, F.shape[1])  # (M, 3, C) invariant weights
            u = w @ F + self.steer_static(F)  # (M, 3, 3) equivariant vectors
            E = project_to_so3(u.transpose(-1, -2))  # S: columns from the three vectors
            R = E.transpose(-1, -2)
            off = (self.steer_t(tok)[:, None] @ F + self.steer_t_static(F))[:, 0]  # (M, 3)
            t = (R @ off[..., None])[..., 0] + self.steer_t_inv(tok)
        elif self.rot_readout == "frame":
            E = project_to_so3(self.frame(F).transpose(-1, -2))  # (M, 3, 3), columns
            Q = sixd_to_matrix(self.rot_head(tok))
            R = Q @ E.transpose(-1, -2)
            t = self.trans_head(tok)
        else:  # "pca": K hypotheses R_k = Q_k Eᵀ, t_k, scores; predict the best scored
            h = self.hyp_head(tok).view(-1, self.hypotheses, 10)
            HR = sixd_to_matrix(h[..., :6]) @ E.transpose(-1, -2)[:, None]  # (M, K, 3, 3)
            Ht = h[..., 6:9] - (HR @ c[:, None, :, None])[..., 0]
            logits = h[..., 9]
            best = logits.argmax(-1)
            ar = torch.arange(len(best), device=best.device)
            R, t = HR[ar, best], Ht[ar, best]
        if self.rot_readout != "pca":
            t = t - (R @ c[..., None])[..., 0]  # account for the centring of the input part
        eye = torch.eye(3, dtype=points.dtype, device=points.device)
        rot = torch.where(valid[..., None, None], _scatter(R, valid), eye)
        out = {"rot": rot, "trans": _scatter(t, valid), "frame": _scatter(E, valid)}
        if self.rot_readout == "pca":
            out["hyp_rot"] = torch.where(valid[..., None, None, None], _scatter(HR, valid), eye)
            out["hyp_trans"] = _scatter(Ht, valid)
            out["hyp_logits"] = _scatter(logits, valid)
        if self.corr is not None:
            desc, frac = self.corr(enc.point_features, tok)
            out["desc"], out["frac_score"] = _scatter(desc, valid), _scatter(frac, valid)
        return out


class GlobalAssembler(nn.Module, _PoseHeadMixin):
    """The benchmark's Global baseline: per-part non-equivariant features, concatenated with
    the object feature (max over the valid parts), regressed by an MLP to a 6D rotation and
    a translation. Needs random rotation augmentation to generalise across orientations.

    Args:
        encoder: ``"dgcnn"`` or ``"pointnet"``.
        feat_dim: encoder width.
        k: DGCNN neighbours.
        d_model: hidden width of the pose MLP.
        hidden: encoder block widths (``None``: encoder default).
        batch_norm: batch norm inside the encoder.
        desc_dim: correspondence head width (0: none); same head and outputs as
            :class:`EquivariantAssembler` on the encoder's per-point features and the
            part's hidden feature (not rotation invariant: learned from augmentation).
    """

    def __init__(
        self,
        encoder: str = "dgcnn",
        feat_dim: int = 64,
        k: int = 10,
        d_model: int = 128,
        hidden: list[int] | None = None,
        batch_norm: bool = True,
        desc_dim: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = build_encoder(encoder, feat_dim, k, hidden, batch_norm)
        _, c_inv = _probe(self.encoder, k)
        if not isinstance(desc_dim, int) or desc_dim < 0:
            raise ValueError(f"desc_dim: expected an int >= 0, got {desc_dim!r}")
        self.desc_dim = desc_dim
        self.corr = None
        if desc_dim:
            was = self.encoder.training
            self.encoder.eval()
            with torch.no_grad():
                g = torch.Generator().manual_seed(0)
                pf = self.encoder(torch.randn(2, max(k + 2, 8), 3, generator=g)).point_features
            self.encoder.train(was)
            self.corr = CorrespondenceHead(int(pf.shape[-1]), d_model, desc_dim)
        self.mlp = _mlp([2 * c_inv, d_model, d_model])
        self.act = nn.GELU()
        self._init_heads(d_model)

    def forward(self, points: Tensor, valid: Tensor) -> dict[str, Tensor]:
        """Same interface as :meth:`EquivariantAssembler.forward` (no ``frame``)."""
        from geo3d.rotations import sixd_to_matrix

        valid = check_parts(points, valid)
        x, c = _centre(points[valid])
        enc = self.encoder(x)
        f = _scatter(enc.invariant, valid)  # (B, P, C)
        neg = torch.finfo(f.dtype).min
        g = torch.where(valid[..., None], f, torch.full_like(f, neg)).amax(dim=1)  # (B, C)
        h = self.act(self.mlp(torch.cat([f, g[:, None].expand_as(f)], dim=-1)))[valid]
        R = sixd_to_matrix(self.rot_head(h))
        t = self.trans_head(h) - (R @ c[..., None])[..., 0]
        eye = torch.eye(3, dtype=points.dtype, device=points.device)
        rot = torch.where(valid[..., None, None], _scatter(R, valid), eye)
        out = {"rot": rot, "trans": _scatter(t, valid)}
        if self.corr is not None:
            desc, frac = self.corr(enc.point_features, h)
            out["desc"], out["frac_score"] = _scatter(desc, valid), _scatter(frac, valid)
        return out
