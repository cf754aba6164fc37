"""The `triton` backend under Triton's interpreter, for the tests: imported with TRITON_INTERPRET=1
set only while it is imported, launches recorded, and a faster interpreter scan.

`@triton.jit` reads TRITON_INTERPRET when it decorates a function: Triton's own library
functions (tl.sigmoid, ...) when triton is imported, ours when `triton_kernels` is; Triton's
`constexpr_function` reads it again whenever one runs, so the tests set it around each test
(`interpreter` below) too, and take it away after, for the test files collected later.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

KERNELS = "ichseg.models.ssm.triton_kernels"


def import_interpreted_scan():
    """`ichseg.models.ssm.triton_scan` with its kernels built for the interpreter (the test file
    is skipped where triton is not installed). The environment is left as it was."""
    imported = sys.modules.get("ichseg.models.ssm.triton_scan")
    if imported is not None and imported.INTERPRETED:  # by another triton test file
        return imported
    previous = os.environ.get("TRITON_INTERPRET")
    if sys.modules.get("triton") is not None and previous != "1":
        pytest.fail("triton was imported before the triton tests could set TRITON_INTERPRET=1",
                    pytrace=False)
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        pytest.importorskip("triton")
        from ichseg.models.ssm import triton_scan
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    assert triton_scan.INTERPRETED, "the triton kernels were imported before the tests ran"
    return triton_scan


def interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    """TRITON_INTERPRET=1 for one test (monkeypatch undoes it), with the faster scan and
    device-function calls."""
    from triton.runtime.interpreter import InterpretedFunction, InterpreterError, ScanOps

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(ScanOps, "generic_scan", _scan_whole_slices)
    call = InterpretedFunction.__call__

    def call_device_function(self, *args, **kwargs):
        """A @triton.jit helper called from a kernel. Triton's interpreter patches
        triton.language again at every such call (milliseconds each, most of the kernels' time
        here); for the helpers in the kernels' own module the kernel's launch has patched the
        same triton.language already."""
        if self.fn.__module__ != KERNELS:
            return call(self, *args, **kwargs)
        try:
            return self.rewrite()(*args, **kwargs)
        except Exception as e:
            raise InterpreterError(repr(e)) from e

    monkeypatch.setattr(InterpretedFunction, "__call__", call_device_function)


def _scan_whole_slices(self, inputs):
    """Triton's interpreter calls a scan's combine function once per element (about a millisecond
    each); this is the same fold, first token to last, over whole slices across the scanned
    axis at once, which is the same arithmetic for the elementwise combine functions of the
    kernels."""
    slices = [np.moveaxis(arg.handle.data, self.axis, 0) for arg in inputs]
    results = [np.empty_like(s) for s in slices]
    carried = None
    for i in range(slices[0].shape[0]):
        current = tuple(self.to_tensor(s[i], arg.dtype) for s, arg in zip(slices, inputs,
                                                                           strict=True))
        if carried is None:
            carried = current
        else:
            combined = self.combine_fn.fn(*carried, *current)
            carried = combined if isinstance(combined, tuple) else (combined,)
        for result, value in zip(results, carried, strict=True):
            result[i] = value.handle.data
    return [self.to_tensor(np.moveaxis(r, 0, self.axis), arg.dtype)
            for r, arg in zip(results, inputs, strict=True)]


def record_launches(monkeypatch: pytest.MonkeyPatch, module, execute: bool = True) -> list:
    """Record every launch of `module` (triton_scan) as (Launch, args, constexprs); with
    `execute` False nothing runs, so tensors on the meta device can go through."""
    launches = []
    launch = module._launch

    def recording(planned, *args, **constexprs):
        launches.append((planned, args, constexprs))
        if execute:
            launch(planned, *args, **constexprs)

    monkeypatch.setattr(module, "_launch", recording)
    return launches
