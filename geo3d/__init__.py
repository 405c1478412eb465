"""geo3d: practical equivariance for 3D geometry and robotics in PyTorch."""

__version__ = "0.1.0"
