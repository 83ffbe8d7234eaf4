"""Training options: the moving average of the weights (--train.ema_decay) and --train.compile."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from torch import nn

from test_training import tiny_run
from vitlab.config import RunConfig
from vitlab.training import load_checkpoint, train
from vitlab.training.ema import ema_decay_at, weight_ema


def test_ema_follows_the_documented_update_rule():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = weight_ema(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]  # the first update copies the weights
    ema.update_parameters(model)
    for step in range(1, 40):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        d = ema_decay_at(0.9, step)
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
        ema.update_parameters(model)
    for e, a in zip(expected, ema.module.parameters()):
        torch.testing.assert_close(a, e)
    assert ema_decay_at(0.9, 0) == pytest.approx(0.1) and ema_decay_at(0.9, 1000) == 0.9  # warm-up, then the decay
    assert int(ema.module[1].num_batches_tracked) == int(model[1].num_batches_tracked)  # integer buffers copied
    assert not any(p is q for p, q in zip(ema.module.parameters(), model.parameters()))  # a copy, not the model


@pytest.mark.parametrize("decay", [-0.5, 1.0])
def test_ema_decay_out_of_range_is_refused(decay):
    with pytest.raises(ValueError, match="between 0 and 1"):
        weight_ema(nn.Linear(2, 2), decay)


def test_a_run_with_ema_saves_the_average_and_resumes_exactly(pattern_folder, tmp_path):
    cfg = tiny_run(pattern_folder, epochs=3, ema_decay=0.9)
    full = train(cfg, tmp_path / "full", progress=False)
    plain = train(tiny_run(pattern_folder, epochs=3), tmp_path / "plain", progress=False)
    saved, _ = load_checkpoint(tmp_path / "full" / "last.safetensors")
    state = torch.load(tmp_path / "full" / "resume.pt", weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    for name, value in saved.state_dict().items():  # the checkpoint is the average, not the trained weights
        assert torch.equal(value, averaged[name]), name
    assert any(not torch.equal(v, state["model"][k]) for k, v in averaged.items())
    # the trained weights themselves are those of the same run without EMA: EMA only watches
    for name, value in state["model"].items():
        assert torch.equal(value, torch.load(tmp_path / "plain" / "resume.pt", weights_only=True)["model"][name])
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in plain.history]

    train(cfg, tmp_path / "cut", progress=False, stop_after_epoch=1)
    resumed = train(RunConfig(), tmp_path / "cut", resume=True, progress=False)
    again, _ = load_checkpoint(tmp_path / "cut" / "last.safetensors")
    for (name, p), q in zip(saved.state_dict().items(), again.state_dict().values()):
        assert torch.equal(p, q), name
    assert [h["val_acc"] for h in full.history] == [h["val_acc"] for h in resumed.history]


def test_compiled_training_step_matches_eager(pattern_folder, tmp_path):
    """--train.compile changes how the step runs, not what it computes (dropout off: same random numbers; fp32 for
    both, since auto would pick bf16 for the compiled step on a CPU with native bf16)."""
    def run(name, **extra):
        cfg = tiny_run(pattern_folder, epochs=1, **extra)
        cfg = replace(cfg, model=replace(cfg.model, drop_rate=0.0, drop_path_rate=0.0))
        return train(cfg, tmp_path / name, progress=False).history[0]

    eager, compiled = run("eager", precision="fp32"), run("compiled", compile=True, precision="fp32")
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-4)


CPU_FLAGS = {  # /proc/cpuinfo flags: a CPU name -> (its flags, whether it multiplies bf16 in hardware)
    "amx": ("fpu sse avx2 avx512f amx_bf16 amx_tile", True),  # Intel Sapphire Rapids and later
    "avx512_bf16": ("fpu sse avx2 avx512f avx512_bf16 avx512_vnni", True),  # AMD Zen 4, Intel Cooper Lake
    "avx2": ("fpu sse avx2 fma", False),
    "avx512, no bf16": ("fpu sse avx2 avx512f avx512bw avx512_vnni amx_tile", False),  # a flag alone is not enough
}


def fake_cpuinfo(tmp_path, monkeypatch, flags: str) -> None:
    from vitlab import device as device_module

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: a CPU with amx_bf16 in its name\nflags\t\t: {flags}\n")
    monkeypatch.setattr(device_module, "CPUINFO", cpuinfo)
    device_module.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("cpu", sorted(CPU_FLAGS))
def test_precision_auto_resolves_as_documented_with_and_without_native_bf16(cpu, monkeypatch, tmp_path):
    """auto: bf16 on CUDA; on the CPU bf16 only for a compiled step with AMX-BF16 or AVX512-BF16 (measured 0.96-2.0x
    of fp32 with AMX, 1.06-1.8x with AVX512-BF16; eager 0.25-0.55x), fp32 otherwise; explicit values as given; bf16
    on a CPU without either gets a note."""
    from vitlab import device as device_module

    flags, native = CPU_FLAGS[cpu]
    fake_cpuinfo(tmp_path, monkeypatch, flags)
    try:
        assert device_module.cpu_has_native_bf16() is native
        cpu, cuda = torch.device("cpu"), torch.device("cuda")
        assert device_module.resolve_precision("auto", cpu) == "fp32"
        assert device_module.resolve_precision("auto", cpu, compiled=True) == ("bf16" if native else "fp32")
        assert device_module.resolve_precision("auto", cuda) == "bf16"
        assert device_module.resolve_precision("fp32", cpu, compiled=True) == "fp32"
        assert device_module.resolve_precision("bf16", cpu) == "bf16" and device_module.resolve_precision("fp32", cuda) == "fp32"
        assert isinstance(device_module.autocast_context(cpu, "auto"), type(device_module.autocast_context(cpu, "fp32")))
        assert (device_module.precision_note("bf16", cpu) is None) is native
        assert device_module.precision_note("auto", cpu) is None
    finally:
        device_module.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("cpu", ["amx", "avx2"])
def test_a_compiled_run_trains_in_the_precision_auto_resolves_to(cpu, pattern_folder, tmp_path, monkeypatch):
    """The trainer resolves auto once, with the compile it really runs: a compiled step on a CPU with native bf16
    trains and validates under bf16 autocast (recorded in the checkpoint's metadata), fp32 without or uncompiled."""
    from vitlab import device as device_module

    flags, native = CPU_FLAGS[cpu]
    fake_cpuinfo(tmp_path, monkeypatch, flags)
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: module)  # the wiring, not Inductor, is tested
    autocast_dtypes = []
    real_autocast = torch.autocast

    def recording_autocast(*args, **kwargs):
        autocast_dtypes.append(kwargs.get("dtype"))
        return real_autocast(*args, **kwargs)

    monkeypatch.setattr(torch, "autocast", recording_autocast)
    try:
        for name, compile_ in (("compiled", True), ("eager", False)):
            autocast_dtypes.clear()
            train(tiny_run(pattern_folder, epochs=1, compile=compile_), tmp_path / name, progress=False)
            expected = "bf16" if native and compile_ else "fp32"
            assert json.loads((tmp_path / name / "best.json").read_text())["precision"] == expected
            assert bool(autocast_dtypes) is (expected == "bf16")
            assert set(autocast_dtypes) <= {torch.bfloat16}
    finally:
        device_module.cpu_has_native_bf16.cache_clear()


def test_compile_without_a_cpp_compiler_trains_uncompiled_with_a_note(pattern_folder, tmp_path, monkeypatch):
    """--train.compile true on a CPU with no C++ compiler: the run trains eagerly and says why, not a traceback."""
    from vitlab import device as device_module

    monkeypatch.setenv("CXX", "no-such-compiler")
    cpu = torch.device("cpu")
    assert device_module.cpp_compiler() is None
    assert device_module.resolve_compile(False, cpu) == (False, None)
    compile_, note = device_module.resolve_compile(True, cpu)
    assert not compile_ and "C++ compiler" in note and "apt install g++" in note
    assert device_module.resolve_compile(True, torch.device("cuda")) == (True, None)  # CUDA compiles with Triton

    def no_compile(*args, **kwargs):
        raise AssertionError("torch.compile called without a C++ compiler")

    monkeypatch.setattr(torch, "compile", no_compile)
    train(tiny_run(pattern_folder, epochs=1, compile=True), tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "best.json").read_text())["data_notes"]["compile"] == note
    monkeypatch.delenv("CXX")
    assert (device_module.cpp_compiler() is not None) is any(shutil.which(c) for c in ("g++", "c++", "clang++"))
