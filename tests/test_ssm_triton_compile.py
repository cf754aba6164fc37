"""Every kernel of the `triton` backend compiles ahead of time for the GPUs it is meant for:
sm_75 (Colab's T4), sm_80 (A100) and sm_90 (H100), on this machine without a GPU.

The interpreter does not catch what only the compiler refuses (a type it cannot lower, shared
memory over the limit). The launches are recorded under the interpreter at a small shape with
the real tile table and the model's options (z, D, delta_bias, softplus, state 16; the results
checked against `reference` there, across three chunks of the real length), each
argument specialised as Triton's launcher does (`native_specialize_impl`: pointer and integer
alignment, integers equal to 1 made constants), and compiled by `triton.compile` for each
architecture in a process where the kernels are not interpreted. ptxas ships in the triton
wheel. Triton's cache sits in pytest's cache folder: the first run compiles (about a minute per
architecture here), later runs of the same sources find the compiled kernels there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_ssm import assert_matches_reference, make_inputs
from triton_interpreter import import_interpreted_scan, interpret, record_launches

triton_scan = import_interpreted_scan()

from ichseg.models.ssm import triton_plan  # noqa: E402

ARCHITECTURES = (75, 80, 90)

COMPILE = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from ichseg.models.ssm import triton_kernels

assert not triton.knobs.runtime.interpret
specs = json.load(sys.stdin)
for capability in json.loads(sys.argv[1]):
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    for spec in specs:
        alignment = {(int(i),): backend.parse_attr(a) for i, a in spec["alignment"].items()}
        source = ASTSource(getattr(triton_kernels, spec["kernel"]), spec["signature"],
                           spec["constants"], alignment)
        kernel = triton.compile(source, target=target, options={"num_warps": spec["num_warps"]})
        print(json.dumps({"capability": capability, "kernel": spec["kernel"],
                          "shared": kernel.metadata.shared,
                          "cubin_bytes": len(kernel.asm["cubin"])}), flush=True)
"""


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    interpret(monkeypatch)


def recorded_specs(monkeypatch) -> list[dict]:
    """Each distinct (kernel, signature, constants, alignment, warps) that a forward and a
    backward launch."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    from ichseg.models.ssm import triton_kernels

    launches = record_launches(monkeypatch, triton_scan)
    # With the real tiles (chunks of 128 tokens at state 16): three chunks, the last partial.
    length = 2 * triton_plan.tile_sizes(16).chunk + 5
    assert_matches_reference(make_inputs(2, 3, length, 16, seed=0), "triton", softplus=True)
    specs = {}
    for launch, args, constexprs in launches:
        names = getattr(triton_kernels, launch.kernel).arg_names
        signature, constants, alignment = {}, {}, {}
        for index, (name, value) in enumerate(zip(names[:len(args)], args, strict=True)):
            kind, attribute = native_specialize_impl(BaseBackend, value, False, True, True)
            signature[name] = kind
            if kind == "constexpr":
                constants[name] = attribute
            elif attribute:
                alignment[index] = attribute
        for name, value in constexprs.items():
            signature[name] = "constexpr"
            constants[name] = value
        assert list(signature) == names, launch.kernel
        spec = dict(kernel=launch.kernel, signature=signature, constants=constants,
                    alignment=alignment, num_warps=launch.num_warps)
        specs[json.dumps(spec, sort_keys=True)] = spec
    return list(specs.values())


@pytest.mark.slow
def test_every_kernel_compiles_for_sm75_sm80_and_sm90(monkeypatch, request):
    specs = recorded_specs(monkeypatch)
    assert {spec["kernel"] for spec in specs} == {
        "chunk_ends", "carry", "chunk_outputs", "chunk_adjoints", "chunk_gradients"}
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment["TRITON_CACHE_DIR"] = str(request.config.cache.mkdir("triton-compile"))
    result = subprocess.run(
        [sys.executable, "-c", COMPILE, json.dumps(ARCHITECTURES)], input=json.dumps(specs),
        capture_output=True, text=True, env=environment, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    compiled = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted((c["capability"], c["kernel"]) for c in compiled) == sorted(
        (capability, spec["kernel"]) for capability in ARCHITECTURES for spec in specs)
    for kernel in compiled:
        assert kernel["cubin_bytes"] > 0, kernel
        assert kernel["shared"] <= 48 * 1024, kernel  # the static limit of every target
