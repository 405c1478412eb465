"""Batch normalisation that ignores padded entries (used by VN and baseline encoders)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["MaskedBatchNorm"]


class MaskedBatchNorm(nn.Module):
    """Batch norm over channel dim 1 whose statistics skip padded entries.

    Behaves like :class:`torch.nn.BatchNorm1d` (affine, running statistics, momentum) on
    inputs of shape :math:`(B, C, *)`, except that in training mode the mean and variance are
    computed only over entries where ``mask`` is True, and running statistics are updated
    from those. In eval mode the running statistics are used and the mask is irrelevant.

    Args:
        num_features: number of channels ``C``.
        eps: added to the variance.
        momentum: running-statistics momentum (as in PyTorch).
        affine: learn a per-channel scale and shift.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True) -> None:
        super().__init__()
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = float(momentum)
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Normalise ``x``.

        Args:
            x: input of shape :math:`(B, C, *S)`.
            mask: bool, shape :math:`(B, *S)` (True = valid) or None (all valid).

        Returns:
            tensor of the shape of ``x``.
        """
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"x: expected shape (B, {self.num_features}, ...), got {tuple(x.shape)}")
        shape = [1, -1] + [1] * (x.dim() - 2)
        if self.training:
            dims = [0] + list(range(2, x.dim()))
            if mask is None:
                count = x.numel() // x.shape[1]
                if count > 0:
                    mean = x.mean(dim=dims)
                    var = x.var(dim=dims, unbiased=False)
                else:  # empty batch: nothing to normalise, running statistics kept
                    mean = x.new_zeros(x.shape[1])
                    var = x.new_ones(x.shape[1])
                count_t = torch.tensor(float(count), dtype=x.dtype, device=x.device)
                count_raw = count_t
            else:
                if mask.shape != x.shape[:1] + x.shape[2:]:
                    raise ValueError(
                        f"mask: expected shape {tuple(x.shape[:1] + x.shape[2:])}, got {tuple(mask.shape)}")
                m = mask.unsqueeze(1)
                zero = torch.zeros((), dtype=x.dtype, device=x.device)
                count_raw = m.to(x.dtype).sum(dim=dims)  # (1,) -> broadcast
                count_t = count_raw.clamp_min(1.0)
                xm = torch.where(m, x, zero)
                mean = xm.sum(dim=dims) / count_t
                dev = torch.where(m, x - mean.view(shape), zero)
                var = (dev * dev).sum(dim=dims) / count_t
            with torch.no_grad():
                n = count_t.detach()
                unbiased = var.detach() * n / (n - 1).clamp_min(1.0)
                # a batch without any valid entry (B = 0, or all padded) leaves the running
                # statistics as they are (its mean/var are NaN or meaningless 0)
                has = count_raw.detach() > 0
                rm, rv = self.running_mean, self.running_var
                new_m = rm * (1 - self.momentum) + self.momentum * mean.detach().to(rm.dtype)
                new_v = rv * (1 - self.momentum) + self.momentum * unbiased.to(rv.dtype)
                rm.copy_(torch.where(has, new_m, rm))
                rv.copy_(torch.where(has, new_v, rv))
        else:
            mean = self.running_mean.to(x.dtype)
            var = self.running_var.to(x.dtype)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
