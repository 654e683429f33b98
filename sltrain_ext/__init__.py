"""sltrain_ext: SLTrain (sparse + low-rank) layers, kernels and optimizer for PyTorch.

``import sltrain_ext`` registers the ``torch.ops.sltrain`` operators.
"""

from .convert import ConversionReport, convert, merge
from .nn import LowRankLinear, SLLinear
from .ops import (
    densify,
    fused_adam4bit_,
    fused_adam8bit_,
    fused_adam_,
    matmul_config,
    matmul_path,
    nnz_for_density,
    random_support,
    set_matmul_config,
    sl_matmul,
    sl_matmul_backward,
    transpose_support,
    validate_support,
)
from .optim import SLAdamW
from .pretrained import load_pretrained, save_pretrained

__version__ = "0.2.0"

__all__ = [
    "ConversionReport",
    "LowRankLinear",
    "SLLinear",
    "SLAdamW",
    "densify",
    "fused_adam_",
    "fused_adam8bit_",
    "fused_adam4bit_",
    "convert",
    "load_pretrained",
    "matmul_config",
    "matmul_path",
    "merge",
    "nnz_for_density",
    "random_support",
    "save_pretrained",
    "set_matmul_config",
    "sl_matmul",
    "sl_matmul_backward",
    "transpose_support",
    "validate_support",
]
