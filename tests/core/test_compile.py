"""``--compile`` (issue 14, item 2): torch.compile of the denoiser, in place and with a safe way out."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from letstalk_core import runtime
from letstalk_core.runtime import compile_forward, is_compiled, uncompile


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        if x.shape[-1] != 8:
            raise ValueError("x must have 8 features")
        return self.b(torch.nn.functional.gelu(self.a(x))) + x


def test_compiled_module_equals_eager_and_keeps_its_names():
    torch.manual_seed(0)
    m = Tiny().eval()
    x = torch.randn(4, 8)
    with torch.no_grad():
        expected = m(x)
    keys = list(m.state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compile_forward(m)
        with torch.no_grad():
            got = m(x)
    fell_back = [w for w in caught if "could not compile" in str(w.message)]
    # Either the compiler ran (and the module stays compiled) or it is missing here and said so.
    assert is_compiled(m) != bool(fell_back)
    assert (got - expected).abs().max() < 1e-5
    assert list(m.state_dict()) == keys and type(m) is Tiny
    uncompile(m)
    assert not is_compiled(m) and torch.equal(m(x), expected)


def test_a_failing_compiler_warns_once_and_runs_eagerly(monkeypatch):
    from torch._dynamo.exc import TorchDynamoException

    def broken(fn, **kwargs):
        def call(*a, **k):
            raise TorchDynamoException("no C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    m = Tiny().eval()
    x = torch.randn(2, 8)
    said = []
    compile_forward(m, warn=said.append)
    assert is_compiled(m)
    assert torch.equal(m(x), Tiny.forward(m, x))
    assert len(said) == 1 and "could not compile Tiny" in said[0] and "running it without compiling" in said[0]
    assert not is_compiled(m)
    m(x)
    assert len(said) == 1


def test_the_models_own_errors_pass_through_and_keep_it_compiled(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # compiling = the eager function
    m = Tiny()
    said = []
    compile_forward(m, warn=said.append)
    with pytest.raises(ValueError, match="8 features"):
        m(torch.randn(2, 5))
    assert is_compiled(m) and not said


def test_errors_are_told_apart_by_where_they_come_from():
    from torch._dynamo.exc import Unsupported

    inner = Unsupported("graph break") if Unsupported.__init__ is not BaseException.__init__ else Unsupported()
    try:
        try:
            raise inner
        except Unsupported as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as outer:
        assert runtime._from_compiler(outer)
    assert not runtime._from_compiler(ValueError("bad input"))


def test_cli_has_the_option():
    from letstalk_core.cli import build_parser

    a = build_parser().parse_args(["generate", "--checkpoint", "demo", "--image", "i.png", "--audio", "a.wav",
                                   "--out", "o.mp4", "--compile"])
    assert a.compile
