"""The CUDA kernels on a real GPU. Marked `gpu`: skipped where no CUDA device
is present (CI has none; `benchmarks/gpu_run.sh` runs these, also under
compute-sanitizer). Their logic is also tested without a GPU, through the
CUDA-on-CPU emulator (tests/cuda/test_cuda_kernels.cpp in ctest)."""

import random

import pytest
import torch

import sltrain_ext as sl
from helpers import DTYPES, assert_close, check_sl_matmul, codes_in_order, make_problem

pytestmark = pytest.mark.gpu

PATHS = ["factored", "materialized"]


def poison_allocator():
    """Fill the caching allocator's free blocks with NaN, so a kernel that
    reads memory it never wrote returns NaN instead of a lucky zero."""
    if torch.cuda.is_available():
        torch.empty(64 << 20, dtype=torch.uint8, device="cuda").fill_(0xFF)  # freed at once, still filled


@pytest.fixture(params=PATHS)
def path(request):
    # A small workspace makes the materialised path run many row chunks.
    with sl.matmul_config(request.param, workspace_bytes=1 << 16):
        yield request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_sl_matmul_random_shapes(seed, dtype, path):
    rng = random.Random(seed)
    m, n, r = rng.randint(1, 90), rng.randint(1, 90), rng.randint(1, 16)
    nnz = rng.randint(0, m * n)
    lead = [rng.randint(1, 9) for _ in range(rng.randint(1, 3))]
    p = make_problem(m, n, r, nnz, dtype, device="cuda", seed=seed, bias=bool(seed % 2))
    x = torch.randn(*lead, n, dtype=torch.float64).to(dtype=dtype, device="cuda")
    check_sl_matmul(p, x, dtype, before_each=poison_allocator)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "b,m,n,r,nnz",
    [
        (0, 5, 7, 2, 9),  # no tokens
        (4, 1, 9, 1, 3),  # m = 1
        (4, 9, 1, 3, 4),  # n = 1
        (3, 4, 0, 2, 0),  # n = 0: y is the bias
        (3, 6, 8, 2, 0),  # empty support
        (3, 6, 8, 2, 48),  # density 1
        (2, 3, 5461, 4, 1500),  # LLaMA-1B's odd width: padded leading dimensions
        (5, 5461, 3, 4, 1500),  # and as the output
        (1, 300, 40, 8, 1200),  # one token: the SpMV
        (16, 64, 2048, 8, 4000),  # decode batch, rows longer than a warp
    ],
)
def test_sl_matmul_edge_shapes(b, m, n, r, nnz, dtype, path):
    p = make_problem(m, n, r, nnz, dtype, device="cuda", seed=b + m)
    x = torch.randn(b, n, dtype=torch.float64).to(dtype=dtype, device="cuda")
    check_sl_matmul(p, x, dtype, before_each=poison_allocator)


@pytest.mark.parametrize("dtype", DTYPES)
def test_both_paths_agree_and_repeat_bitwise(dtype):
    p = make_problem(200, 160, 16, 3000, dtype, device="cuda", seed=3)
    x = torch.randn(64, 160, dtype=dtype, device="cuda")
    grad_y = torch.randn(64, 200, dtype=dtype, device="cuda")
    results = {}
    for path in PATHS:
        with sl.matmul_config(path):
            runs = []
            for _ in range(2):
                y = sl.sl_matmul(x, *p.operands(), p.bias)
                runs.append((y, *sl.sl_matmul_backward(grad_y, x, *p.operands())))
            for a, b in zip(*runs):
                assert torch.equal(a, b), f"{path}: two runs differ"
            results[path] = runs[0]
    for a, b in zip(results["factored"], results["materialized"]):
        assert_close(a, b.double().cpu(), dtype, "paths")


def test_a_strided_bias_is_read_correctly_on_both_paths():
    p = make_problem(40, 30, 4, 200, torch.float32, device="cuda", seed=6)
    bias = torch.randn(80, device="cuda")[::2]  # stride 2
    x = torch.randn(5, 30, device="cuda")
    want = x.double() @ sl.densify(*p.operands()).double().T + bias.double()
    for path in PATHS:
        with sl.matmul_config(path):
            got = sl.sl_matmul(x, *p.operands(), bias)
        assert_close(got, want.cpu(), torch.float32, path)


def test_the_factored_backward_caches_its_csc_and_follows_the_support():
    p = make_problem(90, 70, 8, 2000, torch.float32, device="cuda", seed=4)
    x = torch.randn(6, 70, device="cuda")
    grad_y = torch.randn(6, 90, device="cuda")
    transposed = sl.transpose_support(p.row_ptr, p.col_idx, 70)
    assert torch.equal(transposed.cpu(), sl.transpose_support(p.row_ptr.cpu(), p.col_idx.cpu(), 70))
    csc_block = -(-transposed.nbytes // 512) * 512  # as the caching allocator rounds it
    torch.mm(x, x.T)  # cuBLAS's workspace, kept by the allocator, allocated before the measurements

    def backward():
        before = torch.cuda.memory_allocated()
        with sl.matmul_config("factored"):
            grads = sl.sl_matmul_backward(grad_y, x, *p.operands())
        expected = sl.sl_matmul_backward(grad_y.cpu(), x.cpu(), *(t.cpu() for t in p.operands()[:5]), p.scale)
        for name, got, want in zip(("dx", "dA", "dB", "dvalues"), grads, expected):
            assert_close(got, want, torch.float32, name)
        return grads, torch.cuda.memory_allocated() - before

    built, kept_by_first = backward()
    again, kept_by_second = backward()
    assert kept_by_first - kept_by_second == csc_block  # the CSC, built once and kept
    assert all(torch.equal(a, b) for a, b in zip(built, again))
    p.col_idx.copy_(sl.random_support(90, 70, 2000, seed=5, device="cuda")[1])  # rebuilt: dx follows
    backward()


@pytest.mark.parametrize("dtype", DTYPES)
def test_densify_matches_cpu(dtype):
    p = make_problem(37, 5461, 8, 4000, dtype, device="cuda", seed=5)
    poison_allocator()
    w = sl.densify(*p.operands())
    cpu = make_problem(37, 5461, 8, 4000, dtype, device="cpu", seed=5)
    assert_close(w, sl.densify(*cpu.operands()).double(), dtype, "densify")


@pytest.mark.parametrize("m,n,nnz,seed", [(0, 4, 0, 1), (1, 1, 1, 2), (7, 5, 35, 3), (4096, 11008, 2_254_438, 4),
                                          (2**20, 3, 10**6, 5), (3, 5461, 8000, 2**63 - 1)])
def test_random_support_equals_cpu(m, n, nnz, seed):
    cpu = sl.random_support(m, n, nnz, seed)
    cuda = sl.random_support(m, n, nnz, seed, device="cuda")
    assert all(t.is_cuda for t in cuda)
    assert torch.equal(cpu[0], cuda[0].cpu()) and torch.equal(cpu[1], cuda[1].cpu())


def adam_lists(dtype, sizes, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    params = [torch.randn(s, generator=gen).to(dtype) for s in sizes]
    grads = [torch.randn(s, generator=gen).to(dtype) for s in sizes]
    m = [torch.randn(s, generator=gen).to(state_dtype) * 0.1 for s in sizes]
    v = [torch.rand(s, generator=gen).to(state_dtype) for s in sizes]
    return [[t.to(device) for t in ts] for ts in (params, grads, m, v)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_adam_matches_cpu(dtype):
    # Every vector tail, tensors past one 65536-element chunk, more tensors than one launch holds.
    sizes = list(range(0, 10)) + [5461, 65536 * 2 + 3] + [17] * 40
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, step=3)
    cpu = adam_lists(dtype, sizes, "cpu")
    cuda = adam_lists(dtype, sizes, "cuda")
    sl.fused_adam_(*cpu, **hyper)
    sl.fused_adam_(*cuda, **hyper)
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-6}.get(dtype, 1e-2)
    for name, a, b in zip(("params", "grads", "exp_avgs", "exp_avg_sqs"), cpu, cuda):
        for x, y in zip(a, b):
            torch.testing.assert_close(y.cpu(), x, rtol=tolerance, atol=tolerance, msg=name)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_quantised_adam_within_one_code_of_cpu(dtype, bits):
    block = 256 if bits == 8 else 128
    sizes = [1, block - 1, block, block + 1, 5461, 16 * block + 101]
    code_bytes = [s if bits == 8 else (s + 1) // 2 for s in sizes]
    op = sl.fused_adam8bit_ if bits == 8 else sl.fused_adam4bit_
    results = {}
    for device in ("cpu", "cuda"):
        gen = torch.Generator().manual_seed(1)
        params = [torch.randn(s, generator=gen).to(dtype).to(device) for s in sizes]
        m_dtype = torch.int8 if bits == 8 else torch.uint8
        states = [[torch.zeros(n, dtype=t, device=device) for n in code_bytes] for t in (m_dtype, torch.uint8)]
        absmax = [[torch.zeros(-(-s // block), device=device) for s in sizes] for _ in range(2)]
        for step in (1, 2, 3):
            grads = [torch.randn(s, generator=gen).to(dtype).to(device) for s in sizes]
            op(params, grads, states[0], absmax[0], states[1], absmax[1], lr=1e-2,
               beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=step)
        results[device] = (params, states, absmax)
    for p_cpu, p_cuda in zip(results["cpu"][0], results["cuda"][0]):
        torch.testing.assert_close(p_cuda.cpu(), p_cpu, rtol=2e-2, atol=1e-3)
    for signed, (codes_cpu, codes_cuda) in zip((True, False), zip(results["cpu"][1], results["cuda"][1])):
        for a, b in zip(codes_cpu, codes_cuda):
            assert (codes_in_order(a, bits, signed) - codes_in_order(b.cpu(), bits, signed)).abs().max().item() <= 1
    for a, b in zip(sum(results["cpu"][2], []), sum(results["cuda"][2], [])):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=0)


def test_cuda_graph_replay_equals_eager():
    """sl_matmul forward and backward and the Adam step never synchronise with
    the host, so one CUDA graph captures a whole training step."""
    torch.manual_seed(0)
    layer = sl.SLLinear(256, 384, rank=16, density=0.05, device="cuda")
    params = [layer.A, layer.B, layer.values, layer.bias]
    states = [[torch.zeros_like(t) for t in params] for _ in range(2)]
    x = torch.randn(32, 256, device="cuda")

    def step():
        for t in params:
            t.grad = None
        layer(x).square().sum().backward()
        sl.fused_adam_(params, [t.grad for t in params], *states, lr=1e-3, beta1=0.9, beta2=0.999,
                       eps=1e-8, weight_decay=0.0, step=1)

    snapshot = [t.detach().clone() for t in params + sum(states, [])]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up on a side stream, as graph capture requires
    torch.cuda.current_stream().wait_stream(side)
    eager = [t.detach().clone() for t in params + sum(states, [])]
    for t, saved in zip(params + sum(states, []), snapshot):
        t.data.copy_(saved)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for t, saved in zip(params + sum(states, []), snapshot):
        t.data.copy_(saved)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(eager, params + sum(states, [])):
        assert torch.equal(a, b.detach())


def test_captured_decode_step_replayed_equals_eager():
    """Without grad SLLinear is one sl_matmul_inference call per layer, with no
    host synchronisation: a CUDA graph captures a whole decode step, and
    replaying it on new input equals the eager step (and the training forward)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(sl.SLLinear(256, 512, rank=16, density=0.05), torch.nn.GELU(),
                                sl.SLLinear(512, 256, rank=16, density=0.05)).cuda().eval()
    for layer in (model[0], model[2]):
        torch.nn.init.normal_(layer.B)
    static_x = torch.randn(16, 256, device="cuda")
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            model(static_x)  # warm-up on a side stream, as graph capture requires
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = model(static_x)
        for _ in range(2):
            x = torch.randn(16, 256, device="cuda")
            static_x.copy_(x)
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(static_y, model(x))
    with torch.enable_grad():
        assert_close(static_y, model(x).detach().double(), torch.float32, "training forward")


@pytest.mark.parametrize("state_bits", [32, 8, 4])
def test_captured_sladamw_step_replayed_n_times_equals_n_eager_steps(state_bits):
    """capturable=True keeps the step counts and a tensor lr on the device, so
    each replay of one captured training step takes the next step (a graph of
    a host-side step count would repeat the same step)."""
    torch.manual_seed(0)
    x = torch.randn(32, 256, device="cuda")

    def make():
        torch.manual_seed(1)
        layer = sl.SLLinear(256, 384, rank=16, density=0.05, device="cuda")
        optimizer = sl.SLAdamW(layer.parameters(), lr=torch.tensor(1e-2, dtype=torch.float64, device="cuda"),
                               weight_decay=0.1, state_bits=state_bits, min_8bit_numel=64, capturable=True,
                               max_grad_norm=1.0)
        return layer, optimizer

    def train_step(layer, optimizer):
        optimizer.zero_grad(set_to_none=False)
        layer(x).square().mean().backward()
        optimizer.step()

    eager_layer, eager_optimizer = make()
    for _ in range(8):
        train_step(eager_layer, eager_optimizer)

    layer, optimizer = make()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # eager warm-up steps: they build the fused calls
            train_step(layer, optimizer)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        train_step(layer, optimizer)
    for _ in range(5):  # steps 4..8
        graph.replay()
    torch.cuda.synchronize()
    assert all(int(optimizer.state[p]["step"]) == 8 for p in layer.parameters())
    for ours, theirs in zip(layer.parameters(), eager_layer.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_sllinear_trains_on_cuda():
    torch.manual_seed(0)
    layer = sl.SLLinear(64, 48, rank=8, density=0.1, device="cuda")
    target = torch.randn(32, 48, device="cuda")
    optimizer = sl.SLAdamW(layer.parameters(), lr=1e-2)
    data = torch.randn(32, 64, device="cuda")
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = (layer(data) - target).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_mixed_devices_name_the_argument():
    p = make_problem(6, 8, 2, 10)
    with pytest.raises(ValueError, match="`B` is on cpu but `A` is on cuda"):
        sl.sl_matmul(torch.randn(3, 8, device="cuda"), p.A.cuda(), p.B, p.values.cuda(),
                     p.row_ptr.cuda(), p.col_idx.cuda(), 1.0)
    param = torch.zeros(4, device="cuda")
    with pytest.raises(ValueError, match=r"`grads`\[0\] is on cpu"):
        sl.fused_adam_([param], [torch.zeros(4)], [param.clone()], [param.clone()], lr=1e-3, beta1=0.9,
                       beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)


def test_the_llama_mlp_hands_its_sl_layers_aligned_rows_at_an_odd_width():
    # intermediate 45 (as LLaMA-1B's 5461): down_proj's input and the
    # gradients reaching gate_proj and up_proj come with rows 16 bytes apart,
    # so the CUDA sl_matmul neither copies nor stages them (issue 19).
    from sltrain_ext import configs
    from sltrain_ext.llama import LlamaForCausalLM

    torch.manual_seed(0)
    config = configs.LlamaConfig(name="odd", hidden_size=32, intermediate_size=45, num_hidden_layers=1,
                                 num_attention_heads=4, vocab_size=64, max_position_embeddings=64,
                                 rms_norm_eps=1e-6, tie_word_embeddings=False, rank=4, alpha=8.0, density=0.1)
    model = LlamaForCausalLM(config)
    sl.convert(model, rank=4, density=0.1, alpha=8.0)
    model = model.to(device="cuda", dtype=torch.bfloat16)
    mlp = model.model.layers[0].mlp
    row_strides = {}
    mlp.down_proj.register_forward_pre_hook(lambda module, args: row_strides.update(down_input=args[0].stride(-2)))
    for name in ("gate_proj", "up_proj"):
        getattr(mlp, name).register_full_backward_hook(
            lambda module, grad_input, grad_output, name=name: row_strides.update({name: grad_output[0].stride(-2)}))
    model.loss(torch.randint(0, 64, (2, 9), device="cuda")).backward()
    assert row_strides == {"down_input": 48, "gate_proj": 48, "up_proj": 48}
