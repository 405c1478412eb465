"""Equivariant layers and point-cloud encoders.

Vector Neuron layers take features ``(B, C, 3, ...)``; every encoder maps
``points (B, N, 3)`` and an optional ``mask (B, N)`` (True = valid) to an
:class:`EncoderOutput`.
"""

from ._baselines import DGCNN, PointNet
from ._batchnorm import MaskedBatchNorm
from ._egnn import EGNN, EGNNLayer
from ._graph import Neighborhood, knn_neighborhood, masked_knn
from ._lora import LoRAQKV, LoRAViT, lora_trainable_parameter_count
from ._output import EncoderOutput
from ._tfn import TFNEncoder, e3nn_l1_to_xyz
from ._vit import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PatchEmbed,
    VisionTransformer,
    imagenet_normalize,
    interpolate_pos_embed,
    vit_base,
    vit_giant2,
    vit_large,
    vit_small,
)
from ._vit_load import hf_to_official_state_dict, load_vit, vit_from_state_dict
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
    "knn_neighborhood",
    "Neighborhood",
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
    "VisionTransformer",
    "PatchEmbed",
    "vit_small",
    "vit_base",
    "vit_large",
    "vit_giant2",
    "load_vit",
    "vit_from_state_dict",
    "hf_to_official_state_dict",
    "interpolate_pos_embed",
    "imagenet_normalize",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoRAQKV",
    "LoRAViT",
    "lora_trainable_parameter_count",
]
