"""GPTQ (Frantar et al. 2023): round the weights one input column at a time, pushing each column's
rounding error onto the columns not yet rounded, weighted by the inverse Hessian of the layer's
inputs. Same codes, scales and zero points as round-to-nearest (compress.quantize), chosen so that
the layer's *outputs* on calibration text move less: on MiniLM at 2 bits (groups of 32, asymmetric)
the output error ||X (W - Q)^T||^2 / ||X W^T||^2 drops from 0.068 to 0.028, at 4 bits per channel
from 0.0095 to 0.0034.

Written here because the libraries that ship GPTQ (gptqmodel, llm-compressor, optimum) target
decoder LLMs on CUDA; the algorithm itself is these ~40 lines. Which text calibrates is the
caller's choice (compress.backbone: the task's texts, or the package's general text).
"""

from __future__ import annotations

import logging

import torch

from compress import calibration, quantize
from compress.qweight import QWeight

log = logging.getLogger(__name__)
BLOCK = 128  # columns per lazy-batch block


def input_hessians(model: torch.nn.Module, names: list[str], batches) -> dict[str, torch.Tensor]:
    """H = sum x x^T over the non-padding tokens reaching each named Linear (float64 [in, in])."""
    hessians: dict[str, torch.Tensor] = {}

    def update(name, x):
        x = x.double()
        hessians[name] = hessians.get(name, 0) + x.T @ x

    calibration.collect_inputs(model, names, batches, update)
    if len(hessians) != len(names):
        raise quantize.QuantConfigError("GPTQ calibration reached no tokens: give it non-empty calibration batches")
    return hessians


def _round_column(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int) -> torch.Tensor:
    if bits == 1:
        return torch.where(w >= 0, 1.0, -1.0).double()
    return quantize._codes(w[:, None, None].float(), scale[:, None], None if zero is None else zero[:, None].float(), bits)[
        :, 0, 0
    ].double()


@torch.no_grad()
def gptq_tensor(
    w: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    group_size: int | None = None,
    clip_search: bool = True,
    symmetric: bool = True,
    damp: float = 0.01,
) -> QWeight:
    """Quantize W [rows, cols] with GPTQ given H [cols, cols]: the same grids as quantize.quantize_tensor."""
    W = w.detach().double().clone()
    rows, cols = W.shape
    g = cols if group_size is None else group_size
    quantize._grouped(W, group_size)  # checks divisibility
    H = hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)  # upper Cholesky of H^-1
    q = torch.zeros(rows, cols, dtype=torch.float64)
    scales, zeros = [], []
    # Lazy batch updates (the paper's section 3.2): the error of a block's columns reaches the columns after the block in one
    # matmul instead of one rank-1 update per column. Blocks hold whole groups, so each group's grid is still taken from its
    # columns as updated so far: the same codes as column by column, up to float64 summation order.
    block = max(g, BLOCK // g * g) if g < cols else BLOCK
    for b1 in range(0, cols, block):
        b2 = min(b1 + block, cols)
        W1, E = W[:, b1:b2].clone(), torch.zeros(rows, b2 - b1, dtype=torch.float64)
        for j in range(b2 - b1):
            i = b1 + j
            if i % g == 0:  # this group's grid, from the weights as updated so far (per channel: all of W, before any update)
                cols_of_group = W1[:, j : j + g] if g < cols else W
                _, scale, zero = quantize._quantize_groups(cols_of_group.float()[:, None, :], bits, clip_search, symmetric)
                scale, zero = scale[:, 0], None if zero is None else zero[:, 0]
                scales.append(scale)
                zeros.append(zero)
            q[:, i] = _round_column(W1[:, j], scale, zero, bits)
            E[:, j] = err = (W1[:, j] - q[:, i] * scale.double()) / U[i, i]
            W1[:, j:] -= err[:, None] * U[i, i:b2][None, :]
        W[:, b2:] -= E @ U[b1:b2, b2:]
    zero = None if symmetric or bits == 1 else torch.stack(zeros, 1).to(torch.uint8)
    return quantize.qweight(q, torch.stack(scales, 1), bits, group_size, zero)
