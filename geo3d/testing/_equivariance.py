"""Numerical equivariance checks: ``fn(ρ_in(g)·x) == ρ_out(g)·fn(x)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from geo3d.groups import Group
from geo3d.reps import Rep

__all__ = [
    "EquivarianceError",
    "EquivarianceReport",
    "assert_equivariant",
    "equivariance_error",
    "elements_to_test",
]

RepSpec = Rep | Sequence[Rep | None] | None


def elements_to_test(
    group: Group,
    n_samples: int = 16,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    structured: bool = True,
) -> tuple[torch.Tensor, list[str]]:
    """The group elements a check runs on, with a label for each.

    Finite groups: every element (``n_samples`` is ignored). Continuous groups: the group's
    structured elements (identity, rotations by π about random axes, reflections, boosts
    at the largest rapidity, ... see ``group.special_elements``) when ``structured``, then
    ``n_samples`` random (Haar) elements.

    Returns:
        ``(elements (k, *element_shape), labels)``.
    """
    if not isinstance(group, Group):
        raise ValueError(f"group: expected a geo3d.groups.Group, got {type(group).__name__}")
    if group.is_finite:
        return group.special_elements(generator, dtype, device)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 0:
        raise ValueError(f"n_samples: expected a non-negative int, got {n_samples!r}")
    els, labels = [], []
    if structured:
        e, lab = group.special_elements(generator, dtype, device)
        els.append(e)
        labels += lab
    if n_samples:
        els.append(group.sample(n_samples, generator=generator, dtype=dtype, device=device))
        labels += [f"random sample {i}" for i in range(n_samples)]
    if not els:
        raise ValueError("n_samples: expected at least one group element to test, got 0")
    return torch.cat([e.to(dtype=dtype) for e in els]), labels


def _reps(spec: RepSpec, name: str) -> tuple[tuple[Rep | None, ...], bool]:
    """Normalise a rep spec to a tuple; returns (reps, was_tuple)."""
    if spec is None or isinstance(spec, Rep):
        return (spec,), False
    if isinstance(spec, (tuple, list)):
        for r in spec:
            if r is not None and not isinstance(r, Rep):
                raise ValueError(f"{name}: expected Rep or None entries, got {type(r).__name__}")
        return tuple(spec), True
    raise ValueError(f"{name}: expected a Rep, a tuple of Reps or None, got {type(spec).__name__}")


def _outputs(y, n: int, is_tuple: bool) -> tuple[torch.Tensor, ...]:
    if is_tuple:
        if not isinstance(y, (tuple, list)) or len(y) != n:
            got = (
                f"{type(y).__name__} of length {len(y)}"
                if isinstance(y, (tuple, list))
                else type(y).__name__
            )
            raise ValueError(f"out_rep: {n} reps given, so fn must return {n} outputs, got {got}")
        ys = tuple(y)
    else:
        ys = (y,)
    for k, t in enumerate(ys):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"fn: output {k} must be a torch.Tensor, got {type(t).__name__}")
    return ys


class EquivarianceError(AssertionError):
    """Raised by :func:`assert_equivariant`; carries the per-element results.

    Attributes:
        errors: per-element errors ``(k,)``.
        labels: one description per tested element.
        worst: index of the worst element.
    """

    def __init__(self, message: str, errors: torch.Tensor, labels: list[str], worst: int):
        super().__init__(message)
        self.errors = errors
        self.labels = labels
        self.worst = worst


@dataclass
class EquivarianceReport:
    """Per-element results of a check (all tensors ``(k,)`` float64 on CPU)."""

    errors: torch.Tensor
    scales: torch.Tensor
    labels: list[str]


def _evaluate(
    fn: Callable,
    group: Group,
    in_rep: RepSpec,
    out_rep: RepSpec,
    inputs,
    n_samples: int,
    generator: torch.Generator | None,
    batch: Sequence[int],
    dtype: torch.dtype,
    device,
    elements: torch.Tensor | None,
    structured: bool,
) -> EquivarianceReport:
    if not callable(fn):
        raise ValueError(f"fn: expected a callable, got {type(fn).__name__}")
    if not isinstance(group, Group):
        raise ValueError(f"group: expected a geo3d.groups.Group, got {type(group).__name__}")
    in_reps, _ = _reps(in_rep, "in_rep")
    out_reps, out_tuple = _reps(out_rep, "out_rep")
    for name, reps in (("in_rep", in_reps), ("out_rep", out_reps)):
        for r in reps:
            if r is not None and r.group != group:
                raise ValueError(f"{name}: {r!r} is for {r.group!r}, but group is {group!r}")
    if generator is None:
        generator = torch.Generator(device=device or "cpu").manual_seed(0)
    if device is None:
        device = generator.device

    if inputs is None:
        if any(r is None for r in in_reps):
            raise ValueError("inputs: required when in_rep contains None (nothing to draw from)")
        batch = tuple(batch) if isinstance(batch, (tuple, list, torch.Size)) else (batch,)
        xs = tuple(
            r.randn(*batch, generator=generator, dtype=dtype, device=device) for r in in_reps
        )
    else:
        xs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        if len(xs) != len(in_reps):
            raise ValueError(
                f"inputs: expected {len(in_reps)} inputs (one per in_rep), got {len(xs)}"
            )

    if elements is None:
        els, labels = elements_to_test(group, n_samples, generator, dtype, device, structured)
    else:
        group.validate(elements, "elements")
        els = elements.reshape(-1, *group.element_shape)
        if els.shape[0] == 0:
            raise ValueError(
                f"elements: expected at least one group element, got shape {tuple(elements.shape)}"
            )
        labels = [f"given element {i}" for i in range(els.shape[0])]

    versions = [_version(x) for x in xs]
    ys = tuple(t.detach() for t in _outputs(fn(*xs), len(out_reps), out_tuple))
    _check_unchanged(xs, versions)
    errors, scales = [], []
    compared = False
    for g in els:
        gxs = tuple(x if r is None else r.act(g, x) for r, x in zip(in_reps, xs, strict=True))
        ygs = _outputs(fn(*gxs), len(out_reps), out_tuple)
        err = torch.zeros((), dtype=torch.float64)
        scale = torch.zeros((), dtype=torch.float64)
        for k, (r, y, yg) in enumerate(zip(out_reps, ys, ygs, strict=True)):
            try:
                expected = y if r is None else r.act(g, y)
            except ValueError as err:
                raise ValueError(f"out_rep: output {k} of fn does not fit {r!r}: {err}") from None
            if expected.shape != yg.shape:
                raise ValueError(
                    f"fn: output {k} has shape {tuple(yg.shape)} on the transformed input but "
                    f"{out_reps[k]!r} predicts {tuple(expected.shape)}"
                )
            if expected.numel() == 0:
                continue
            compared = True
            diff = (yg.detach().to(torch.float64) - expected.to(torch.float64)).abs().max().cpu()
            err = torch.maximum(err, torch.nan_to_num(diff, nan=float("inf")))
            scale = torch.maximum(scale, expected.detach().to(torch.float64).abs().max().cpu())
        errors.append(err)
        scales.append(scale)
    _check_unchanged(xs, versions)
    if not compared:
        shapes = ", ".join(str(tuple(y.shape)) for y in ys)
        raise ValueError(
            f"inputs: expected inputs for which fn has a non-empty output, got outputs of "
            f"shape {shapes}: an empty batch compares nothing, so no error can be measured"
        )
    return EquivarianceReport(torch.stack(errors), torch.stack(scales), labels)


def _version(x) -> int | None:
    """In-place modification counter of a tensor (None where torch keeps none)."""
    try:
        return x._version if isinstance(x, torch.Tensor) else None
    except RuntimeError:  # inference-mode tensors have no version counter
        return None


def _check_unchanged(xs: tuple, versions: list) -> None:
    for k, (x, v) in enumerate(zip(xs, versions, strict=True)):
        if v is not None and _version(x) != v:
            raise ValueError(
                f"fn: expected a function that leaves its inputs unchanged, got an in-place "
                f"edit of input {k}: later comparisons would use the edited input"
            )


def equivariance_error(
    fn: Callable,
    group: Group,
    in_rep: RepSpec,
    out_rep: RepSpec,
    inputs=None,
    n_samples: int = 16,
    generator: torch.Generator | None = None,
    batch: Sequence[int] = (2,),
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    elements: torch.Tensor | None = None,
    structured: bool = True,
) -> torch.Tensor:
    """Per-element errors ``max |fn(ρ_in(g)·x) − ρ_out(g)·fn(x)|``.

    Args:
        fn: called as ``fn(*inputs)``; returns a tensor, or a tuple when ``out_rep`` is
            a tuple.
        group: the group.
        in_rep: a :class:`~geo3d.reps.Rep`, a tuple of them (one per positional input), or
            ``None`` for an input that does not transform (masks, lengths).
        out_rep: same for the outputs; ``None`` means the output must be invariant.
        inputs: a tensor or tuple of tensors; drawn with ``rep.randn(*batch)`` when None.
        n_samples: number of random (Haar) elements for continuous groups, tested in
            addition to the group's structured elements. Finite groups test every element.
        generator: drives every draw (elements and inputs); a fixed seed (0) when None,
            so a check is reproducible.
        batch: batch shape of drawn inputs.
        dtype: dtype of the group elements and drawn inputs (float64 by default).
        device: device of drawn elements/inputs (default: the generator's).
        elements: test exactly these elements ``(k, *element_shape)`` instead.
        structured: include the structured elements for continuous groups.

    Returns:
        float64 CPU tensor of shape ``(k,)``: one error per tested element
        (``k = n_structured + n_samples`` for continuous groups, ``order`` for finite
        groups); ``inf`` where the output contains NaN.

    Raises:
        ValueError: naming the argument: ``fn`` not callable, returning the wrong number
            of outputs or editing its inputs in place; ``group``/``in_rep``/``out_rep`` of
            the wrong type or group; ``inputs`` that do not fit ``in_rep`` or give only
            empty outputs (an empty batch measures nothing, so no error value exists);
            ``elements`` of the wrong shape, empty, or not group elements (when value
            checks are on, see :func:`geo3d.groups.value_checks_active`).

    Example:
        >>> import torch
        >>> from geo3d.groups import SO3
        >>> from geo3d.reps import Trivial, Vector
        >>> so3 = SO3()
        >>> errs = equivariance_error(lambda x: x.norm(dim=-1, keepdim=True), so3,
        ...                           Vector(so3), Trivial(so3))
        >>> bool(errs.max() < 1e-12)
        True
    """
    return _evaluate(
        fn,
        group,
        in_rep,
        out_rep,
        inputs,
        n_samples,
        generator,
        batch,
        dtype,
        device,
        elements,
        structured,
    ).errors


def assert_equivariant(
    fn: Callable,
    group: Group,
    in_rep: RepSpec,
    out_rep: RepSpec,
    inputs=None,
    n_samples: int = 16,
    atol: float = 1e-6,
    rtol: float = 0.0,
    generator: torch.Generator | None = None,
    batch: Sequence[int] = (2,),
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    elements: torch.Tensor | None = None,
    structured: bool = True,
) -> torch.Tensor:
    """Assert ``fn`` is equivariant: every tested element has
    ``error <= atol + rtol * max|ρ_out(g)·fn(x)|``.

    Arguments as in :func:`equivariance_error`.

    Returns:
        the per-element errors, shape ``(k,)``.

    Raises:
        EquivarianceError: (an ``AssertionError``) naming the worst element (its label,
            error and tolerance) and how many elements failed.
        ValueError: for bad arguments, as :func:`equivariance_error` (empty inputs and
            non-element ``elements`` included: a check that compares nothing never passes).
    """
    if not (atol >= 0 and rtol >= 0):
        raise ValueError(f"atol/rtol: expected non-negative tolerances, got {atol!r}, {rtol!r}")
    rep = _evaluate(
        fn,
        group,
        in_rep,
        out_rep,
        inputs,
        n_samples,
        generator,
        batch,
        dtype,
        device,
        elements,
        structured,
    )
    tol = atol + rtol * rep.scales
    bad = ~(rep.errors <= tol)
    if bool(bad.any()):
        ratio = torch.where(tol > 0, rep.errors / tol, torch.full_like(tol, float("inf")))
        ratio = torch.where(rep.errors > tol, ratio, torch.zeros_like(ratio))
        worst = int(torch.nan_to_num(ratio, nan=float("inf")).argmax())
        fname = getattr(fn, "__name__", type(fn).__name__)
        tol_txt = f"atol {atol:.3g}" + (
            f" + rtol {rtol:.3g} × {float(rep.scales[worst]):.3g}" if rtol else ""
        )
        failed = [rep.labels[i] for i in torch.nonzero(bad).flatten().tolist()]
        more = "" if len(failed) <= 5 else f", ... ({len(failed) - 5} more)"
        raise EquivarianceError(
            f"{fname} is not equivariant under {group!r}: {len(failed)} of {len(rep.labels)} "
            f"tested elements exceed the tolerance. Worst: element {worst} "
            f"({rep.labels[worst]}) with error {float(rep.errors[worst]):.3e} > {tol_txt}. "
            f"Failing: {', '.join(failed[:5])}{more}.",
            rep.errors,
            rep.labels,
            worst,
        )
    return rep.errors
