"""What the CUDA bindings of sl_matmul (csrc/cuda/ops.cu) allocate, compute and
move for one layer call, as formulas: the allocation plan of the materialised
path mirrored step by step (tests/test_cuda_memory.py checks these peaks
against the allocation ledger of the emulated bindings at scaled-down shapes),
the GEMM flops and DRAM bytes of ours and of dense nn.Linear, and the time
both would take at an H100's measured ceilings (DESIGN.md). Every time here
is a PREDICTION until the GPU issue measures it.
"""

from __future__ import annotations

from dataclasses import dataclass

GEMM_FLOPS = 709e12  # bf16 dense GEMM, H100, measured (DESIGN.md)
COPY_BYTES = 3.0e12  # device-to-device copy, H100, measured (DESIGN.md)
# cuBLAS at a leading dimension that is not a multiple of 8 (LLaMA-1B's 5461):
# DESIGN.md measured dense nn.Linear at 1.97 and 1.45 ms against a 0.26 ms
# floor; the smaller slowdown is taken for any GEMM with an unaligned operand.
UNALIGNED_SLOWDOWN = 5.6
DEFAULT_WORKSPACE = 64 << 20


def padded(cols: int) -> int:
    return (cols + 7) // 8 * 8


@dataclass(frozen=True)
class Layer:
    b: int  # tokens
    m: int  # out features
    n: int  # in features
    r: int
    nnz: int
    element: int = 2  # bytes per element (bf16)
    workspace: int = DEFAULT_WORKSPACE  # set_matmul_config's workspace_bytes
    # Whether x and the output gradient arrive with rows 16-byte aligned (a
    # padded row stride), as sltrain_ext's LLaMA MLP lays them out (swiglu in
    # sltrain_ext/llama.py), rather than contiguous from an arbitrary producer.
    operands_aligned: bool = False
    # Bytes a stored column index takes: 2 for the uint16 columns SLLinear
    # keeps (n <= 65536), which each call widens to int32 (nnz * 4 bytes, taken
    # from its workspace), or 4.
    column_bytes: int = 4

    @property
    def widened_column_bytes(self) -> int:  # ops.cu's widened_column_bytes
        return 0 if self.column_bytes == 4 else 4 * self.nnz

    @property
    def factors_from_dW(self) -> bool:  # csrc/common/cost_model.h
        return self.b * (self.m + self.n) >= self.m * self.n


class Workspace:
    """ops.cu's Workspace: the configured bytes, capped by what dense holds
    that the pass does not (`spare` elements)."""

    def __init__(self, layer: Layer, spare: int) -> None:
        self.left = min(layer.workspace, spare * layer.element)

    def take(self, nbytes: int) -> bool:
        if nbytes > self.left:
            return False
        self.left -= nbytes
        return True

    def rows(self, count: int, width: int, element: int, share: int = 1) -> int:
        fit = max(self.left, 0) // share // max(1, width * element) // 8 * 8
        return min(max(8, fit), max(8, padded(count)))

    def elements_left(self, element: int, minimum: int) -> int:
        return max(max(self.left, 0) // element, minimum)


def forward_spare(layer: Layer) -> int:
    return layer.b * layer.n + layer.m * layer.n


def backward_spare(layer: Layer) -> int:
    return layer.m * layer.n - layer.r * (layer.m + layer.n) - layer.nnz


class Plan:
    """Allocations in order; `peak` is the most bytes live at once. The
    decisions that the cost needs ride along as attributes."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def alloc(self, nbytes: int) -> int:
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        return nbytes

    def free(self, nbytes: int) -> None:
        self.live -= nbytes


def aligned_copy(plan: Plan, workspace: Workspace, rows: int, cols: int, element: int,
                 arrives_aligned: bool = False) -> bool:
    """ops.cu's aligned_rows for a [rows, cols] operand, contiguous unless it
    `arrives_aligned`: whether its rows are aligned afterwards (allocating the
    copy, if one was made)."""
    if cols % 8 == 0 or arrives_aligned:
        return True
    if rows <= 1 or not workspace.take(rows * padded(cols) * element):
        return False
    plan.alloc(rows * padded(cols) * element)
    return True


def forward_plan(layer: Layer) -> Plan:
    """The materialised forward's allocations (y included) for contiguous inputs."""
    L, e, plan = layer, layer.element, Plan()
    plan.alloc(L.widened_column_bytes)
    workspace = Workspace(L, forward_spare(L))
    workspace.left -= L.widened_column_bytes
    aligned_copy(plan, workspace, L.r, L.n, e)
    x_aligned = aligned_copy(plan, workspace, L.b, L.n, e, L.operands_aligned)
    plan.alloc(L.b * L.m * e)  # y
    per_token = (0 if x_aligned else padded(L.n)) + (0 if L.m % 8 == 0 else padded(L.m))
    chunk = workspace.rows(L.m, padded(L.n), e, 2 if per_token else 1)
    workspace.left -= chunk * padded(L.n) * e
    staging = workspace.elements_left(e, per_token) if per_token else 0
    plan.alloc((chunk * padded(L.n) + staging) * e)
    plan.x_aligned, plan.chunks = x_aligned, -(-L.m // chunk)
    return plan


def materialized_forward_peak(layer: Layer) -> int:
    return forward_plan(layer).peak


def backward_plan(layer: Layer, mask=(True, True, True, True)) -> Plan:
    """The materialised backward's allocations (its outputs included)."""
    L, e, plan = layer, layer.element, Plan()
    need_dx, need_dA, need_dB, need_dvalues = mask
    plan.alloc(L.widened_column_bytes)
    if not L.factors_from_dW:
        if need_dA:
            t = plan.alloc(L.b * L.r * e)  # g @ B
            plan.alloc(L.r * L.n * e)  # dA
            plan.free(t)
        if need_dB:
            t = plan.alloc(L.b * L.r * e)  # x @ A^T
            plan.alloc(L.m * L.r * e)  # dB
            plan.free(t)
    need_dW = need_dvalues or (L.factors_from_dW and (need_dA or need_dB))
    workspace = Workspace(L, backward_spare(L))
    workspace.left -= L.widened_column_bytes
    g_aligned = aligned_copy(plan, workspace, L.b, L.m, e, L.operands_aligned)
    x_aligned = aligned_copy(plan, workspace, L.b, L.n, e, L.operands_aligned)
    if need_dx:
        aligned_copy(plan, workspace, L.r, L.n, e)  # A
        plan.alloc(L.b * L.n * e)  # dx
    per_token = ((0 if g_aligned else padded(L.m)) + (0 if L.n % 8 == 0 else padded(L.n))) if need_dx else 0
    stage_g_columns = need_dW and not g_aligned and L.b > 1
    dW_width = padded(L.n) + (L.b if stage_g_columns else 0)
    widen_dA = False  # ops.cu's widen_dA, kNarrowSums = 4
    if need_dA and L.factors_from_dW and e < 4:
        chunks = -(-L.m // workspace.rows(L.m, dW_width, e))
        if chunks > 1 and workspace.take(L.r * L.n * 4):
            widen_dA = True
        elif chunks > 4:
            widen_dA = True
            workspace.left -= L.r * L.n * 4
    rows_per_chunk = workspace.rows(L.m, dW_width, e)
    cols_per_chunk = workspace.rows(L.n, L.m, e, 2 if per_token else 1)
    window = L.m * padded(min(cols_per_chunk, L.n))
    staging = max(workspace.elements_left(e, 0) - window, per_token) if per_token else 0
    plan.alloc(max(window + staging if need_dx else 0, rows_per_chunk * dW_width if need_dW else 0) * e)
    if need_dW:
        if need_dvalues:
            plan.alloc(L.nnz * e)
        if need_dB and L.factors_from_dW:
            plan.alloc(L.m * L.r * e)
        if need_dA and L.factors_from_dW:
            dA_sum = plan.alloc(L.r * L.n * (4 if widen_dA else e))
            if widen_dA:
                plan.alloc(L.r * L.n * e)  # dA, converted
                plan.free(dA_sum)
    plan.g_aligned, plan.x_aligned, plan.g_columns_staged = g_aligned, x_aligned, stage_g_columns
    plan.windows, plan.chunks = -(-L.n // cols_per_chunk), -(-L.m // rows_per_chunk)
    return plan


def materialized_backward_peak(layer: Layer, mask=(True, True, True, True)) -> int:
    return backward_plan(layer, mask).peak


def materialized_peak(layer: Layer) -> int:
    """Peak bytes of a forward+backward as a network runs it: y stays alive
    (the next layer holds it) while the backward runs."""
    return max(materialized_forward_peak(layer), layer.b * layer.m * layer.element
               + materialized_backward_peak(layer))


def dense_peak(layer: Layer) -> int:
    """nn.Linear: y, then dx and dW in the backward (the bias gradient is m elements)."""
    L = layer
    return (L.b * L.m + L.b * L.n + L.m * L.n + L.m) * L.element


# ---- flops, DRAM bytes and predicted time ------------------------------------------


@dataclass
class Cost:
    gemm_flops: float = 0.0
    gemm_seconds: float = 0.0  # at GEMM_FLOPS, slowed where an operand is unaligned
    bytes: float = 0.0  # DRAM bytes of every pass (GEMM operands and results included)
    pass_seconds: float = 0.0  # memory-bound passes at COPY_BYTES

    def gemm(self, rows: int, inner: int, cols: int, element: int, aligned: bool = True, accumulate=False):
        flops = 2.0 * rows * inner * cols
        self.gemm_flops += flops
        self.gemm_seconds += flops / GEMM_FLOPS * (1 if aligned else UNALIGNED_SLOWDOWN)
        self.bytes += (rows * inner + inner * cols + rows * cols * (2 if accumulate else 1)) * element

    def stream(self, nbytes: float):
        self.bytes += nbytes
        self.pass_seconds += nbytes / COPY_BYTES

    @property
    def seconds(self) -> float:
        return self.gemm_seconds + self.pass_seconds


def materialized_cost(layer: Layer, backward_pass: bool = True) -> Cost:
    """The materialised forward (+backward): W built once per pass, the b x m x n
    GEMMs (an unaligned operand staged in aligned tiles where ops.cu stages
    it), dA and dB from dW or from the factored formulas."""
    L, e, cost = layer, layer.element, Cost()
    forward, backward = forward_plan(L), backward_plan(L)
    def build_w():  # W = s B A (cuBLAS) + S (the scatter: indices, values, W's element read and written)
        cost.gemm(L.m, L.r, L.n, e)
        cost.stream(L.nnz * (4 + 4 + 2 * e))

    # forward: W in row chunks, y = x W^T + bias
    build_w()
    cost.gemm(L.b, L.n, L.m, e)
    if not forward.x_aligned:
        cost.stream(forward.chunks * L.b * L.n * 2 * e)  # x staged per chunk
    if L.m % 8:
        cost.stream(L.b * L.m * 2 * e)  # y staged, copied out with the bias
    if not backward_pass:
        return cost
    # backward: W again in column windows, dx = g W; dW = g^T x in row chunks
    build_w()
    cost.gemm(L.b, L.m, L.n, e)
    if not backward.g_aligned:
        cost.stream(backward.windows * L.b * L.m * 2 * e)  # g staged per window
    if L.n % 8:
        cost.stream(L.b * L.n * 2 * e)  # dx staged
    if backward.g_columns_staged:
        cost.stream(L.b * L.m * 2 * e)  # g's columns copied, one chunk at a time
    cost.gemm(L.m, L.b, L.n, e, aligned=(backward.g_aligned or backward.g_columns_staged) and backward.x_aligned)
    cost.stream(L.nnz * (4 + 4 + 2 * e))  # gather dvalues
    if L.factors_from_dW:
        cost.gemm(L.m, L.n, L.r, e)  # dB = s dW A^T
        cost.gemm(L.r, L.m, L.n, e)  # dA = s B^T dW
    else:
        cost.gemm(L.b, L.m, L.r, e)  # g B
        cost.gemm(L.r, L.b, L.n, e)  # (g B)^T x
        cost.gemm(L.b, L.n, L.r, e)  # x A^T
        cost.gemm(L.m, L.b, L.r, e)  # g^T (x A^T)
    return cost


def dense_cost(layer: Layer, backward_pass: bool = True) -> Cost:
    L, e, cost = layer, layer.element, Cost()
    aligned = L.n % 8 == 0 and L.m % 8 == 0
    cost.gemm(L.b, L.n, L.m, e, aligned)  # y
    if not backward_pass:
        return cost
    cost.gemm(L.b, L.m, L.n, e, aligned)  # dx
    cost.gemm(L.m, L.b, L.n, e, aligned)  # dW
    return cost
