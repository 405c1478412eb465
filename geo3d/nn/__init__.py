"""Equivariant layers and point-cloud encoders.

Vector Neuron layers take features ``(B, C, 3, ...)``; every encoder maps
``points (B, N, 3)`` and an optional ``mask (B, N)`` (True = valid) to an
:class:`EncoderOutput`.
"""

from ._baselines import DGCNN, PointNet
from ._batchnorm import MaskedBatchNorm
from ._egnn import EGNN, EGNNLayer
from ._graph import masked_knn
from ._output import EncoderOutput
from ._tfn import TFNEncoder, e3nn_l1_to_xyz
from ._vn import (
    VNBatchNorm,
    VNInvariant,
    VNLeakyReLU,
    VNLinear,
    VNLinearLeakyReLU,
    VNMaxPool,
    VNMeanPool,
    vn_edge_features,
)
from ._vn_encoders import VNDGCNN, VNPointNet

__all__ = [
    "EncoderOutput",
    "MaskedBatchNorm",
    "masked_knn",
    "VNLinear",
    "VNLeakyReLU",
    "VNBatchNorm",
    "VNLinearLeakyReLU",
    "VNMaxPool",
    "VNMeanPool",
    "VNInvariant",
    "vn_edge_features",
    "VNPointNet",
    "VNDGCNN",
    "TFNEncoder",
    "e3nn_l1_to_xyz",
    "EGNN",
    "EGNNLayer",
    "PointNet",
    "DGCNN",
]
