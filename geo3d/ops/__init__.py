"""Point-cloud kernels: exact k-NN, neighbour graphs, farthest point sampling, Chamfer.

Everything works on CPU and CUDA, in float32 and float64, with ragged batches given by
lengths, and with memory bounded by chunking (never an N x M matrix).
"""

from ._chamfer import ChamferPerPoint, chamfer_distance
from ._fps import farthest_point_sampling
from ._gather import gather_points
from ._graph import knn_graph, radius_graph
from ._knn import KNN, knn

__all__ = [
    "KNN",
    "ChamferPerPoint",
    "chamfer_distance",
    "farthest_point_sampling",
    "gather_points",
    "knn",
    "knn_graph",
    "radius_graph",
]
