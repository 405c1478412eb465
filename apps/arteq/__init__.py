"""ArtEq: articulated SE(3)-equivariant SMPL fitting from point clouds (Feng et al., ICCV 2023)."""
