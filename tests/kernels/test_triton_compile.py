"""The Triton kernels build for an H100/H200 (sm_90) without a GPU.

Triton's interpreter (test_triton_interpreter.py) runs the kernels' maths op by op but
never compiles them, so a kernel can pass there and still fail to build on a GPU (a
type Triton's front end rejects, a layout its lowering cannot handle). Here every
launch the library makes for the default configurations, and for the variants the
benchmark times, goes through the library's own launch code with CPU tensors of the
right dtypes; the launch is swapped for `triton.compile` of the same arguments for
sm_90: Triton's front end, its lowering and ptxas, no device.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import INTERPRETING

pytestmark = pytest.mark.skipif(INTERPRETING, reason="compiles: not under the interpreter")

DTYPES = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16",
          torch.float64: "fp64", torch.int64: "i64", torch.int32: "i32", torch.int8: "i8",
          torch.uint8: "u8"}


class CompileInstead:
    """Stands in for a jitted kernel: ``kernel[grid](*args, num_warps=, num_stages=)``
    compiles it for sm_90 with those arguments' types and constexprs, runs nothing."""

    def __init__(self, fn, built: list) -> None:
        self.fn, self.built = fn, built

    def __getitem__(self, grid):
        from triton import compile as triton_compile
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        def launch(*args, num_warps=4, num_stages=3):
            signature, constexprs = {}, {}
            for name, param, arg in zip(self.fn.arg_names, self.fn.params, args):
                if param.is_constexpr:
                    signature[name], constexprs[name] = "constexpr", arg
                elif isinstance(arg, torch.Tensor):
                    signature[name] = "*" + DTYPES[arg.dtype]
                elif isinstance(arg, float):
                    signature[name] = "fp32"
                else:
                    signature[name] = "i32" if -2**31 <= arg < 2**31 else "i64"
            kernel = triton_compile(ASTSource(self.fn, signature, constexprs),
                                    target=GPUTarget("cuda", 90, 32),
                                    options={"num_warps": num_warps, "num_stages": num_stages})
            assert kernel.asm["cubin"], self.fn.__name__
            self.built.append(self.fn.__name__)
            return kernel
        return launch


@pytest.fixture
def built(monkeypatch) -> list:
    from trainspect.kernels import token_fold_tl, token_stats_triton

    names: list = []
    monkeypatch.setattr(token_stats_triton, "_rows_kernel",
                        CompileInstead(token_stats_triton._rows_kernel, names))
    monkeypatch.setattr(token_fold_tl, "_fold_kernel",
                        CompileInstead(token_fold_tl._fold_kernel, names))
    return names


def logits(lead, vocab, dtype=torch.bfloat16):
    return torch.zeros(*lead, vocab, dtype=dtype)


def labels(lead):
    return torch.zeros(*lead, dtype=torch.int64)


@pytest.mark.parametrize(("lead", "vocab", "teacher"), [
    pytest.param((4,), 152064, False, id="text"),
    pytest.param((4,), 152064, True, id="teacher"),
    pytest.param((2, 3, 4), 32000, False, id="draft-G4"),
    pytest.param((2, 3, 8), 1026, True, id="audio-short-G8-teacher"),
])
def test_observe_launches_build_for_sm90(built, lead, vocab, teacher):
    from trainspect.kernels.token_stats_triton import fold_triton
    from trainspect.kernels.token_sums import new_state

    groups = lead[-1] if len(lead) > 1 else 1
    target = logits(lead, vocab) if teacher else None
    assert fold_triton(logits(lead, vocab), labels(lead), None, target, groups,
                       new_state(groups, torch.device("cpu")))
    assert built == ["_rows_kernel", "_fold_kernel"]


@pytest.mark.parametrize("config", [
    pytest.param((512, 2, 2, -1, True, 1), id="slots"),
    pytest.param((1024, 4, 2, 0, False, 1), id="block1024-resident"),
    pytest.param((16, 8, 1, 0, False, 8), id="short-tile8"),
])
def test_variants_and_the_fused_loss_launch_build_for_sm90(built, config):
    """A variant with everything on: per-row outputs and the fold, mask, soft cap,
    teacher (short rows) or gradient (long rows, in place as a fused loss does)."""
    from trainspect.kernels.token_stats_triton import TritonConfig, row_stats_triton
    from trainspect.kernels.token_sums import new_state

    short = config[0] == 16
    x = logits((4,), 1026 if short else 32000, torch.float16)
    row_stats_triton(x, labels((4,)), mask=torch.ones(4, dtype=torch.bool),
                     target_logits=x.clone() if short else None,
                     grad_out=None if short else x, grad_scale=None if short else 0.5,
                     logit_softcap=30.0, fold=new_state(1, torch.device("cpu")),
                     config=TritonConfig(*config))
    assert built == ["_rows_kernel", "_fold_kernel"]
