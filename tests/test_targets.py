"""Targets as data: presets, aliases, their TVM targets, `edgec targets`, the NDK error."""

import json

import pytest

from edgec import lower, targets
from edgec.deploy import toolchain
from edgec.errors import ExitCode, InvalidInputError

NAMES = ["arm64", "arm64/cortex-a53", "arm64/cortex-a76", "arm64/rpi4", "arm64/rk3588",
         "android-arm64", "cuda", "cuda/sm_75", "cuda/sm_80", "cuda/sm_86", "cuda/sm_89",
         "cuda/sm_90", "opencl/mali", "opencl/adreno"]  # fmt: skip


def test_every_issue_target_exists_with_a_unique_name():
    names = [t.name for t in targets.TARGETS]
    assert len(names) == len(set(names))
    assert set(NAMES) <= set(names)
    assert targets.get("aarch64").name == "arm64"
    with pytest.raises(InvalidInputError, match="unknown target 'arm32'.*arm64/rpi4"):
        targets.get("arm32")


def test_tvm_targets():
    a76 = lower.target_json(targets.get("arm64/cortex-a76"), 4)
    assert a76 == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
                   "num-cores": 4, "mattr": ["+neon", "+dotprod"]}  # fmt: skip
    assert lower.target_json(targets.get("arm64/rpi4"), 4)["mcpu"] == "cortex-a72"
    assert lower.target_json(targets.get("android-arm64"), 1)["mtriple"] == "aarch64-linux-android"
    cuda = lower.target_json(targets.get("cuda/sm_86"), 2)
    assert cuda["kind"] == "cuda" and cuda["arch"] == "sm_86"
    assert cuda["host"]["kind"] == "llvm" and cuda["host"]["mcpu"] != "host"
    mali = lower.target_json(targets.get("opencl/mali"), 2)
    assert (mali["kind"], mali["device"], mali["host"]["mtriple"]) == (
        "opencl", "mali", "aarch64-linux-gnu"
    )  # fmt: skip


def test_what_each_target_supports():
    get = targets.get
    assert get("x86_64").support() == "runs here"
    assert get("arm64").support(emulator_found=True) == "emulated (qemu-aarch64: correctness only)"
    assert "make cross-toolchain" in get("arm64").support(emulator_found=False)
    assert get("cuda/sm_80").support().startswith("compile-only here (cubin validated by nvcc)")
    assert get("android-arm64").support().startswith("compile-only")
    assert get("arm64/cortex-a76").int8_dot == get("arm64/rk3588").int8_dot == "sdot/udot"
    assert get("arm64/rpi4").int8_dot == get("arm64").int8_dot == ""
    assert not get("cuda").runs_here and get("android-arm64").cross and not get("x86_64").cross


def test_targets_command_lists_support(cli):
    r = cli("targets")
    assert r.code == 0
    lines = r.out.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("arm64/cortex-a76 "))
    assert "emulated (qemu-aarch64" in lines[i + 1] and "int8 dot products" in lines[i + 1]
    data = json.loads(cli("targets", "--json").out)
    by_name = {t["name"]: t for t in data["targets"]}
    assert set(NAMES) <= set(by_name)
    assert by_name["cuda/sm_90"]["device"] == "cuda" and by_name["cuda/sm_90"]["gpu"] == "sm_90"
    assert data["aliases"]["aarch64"] == "arm64"


def test_android_without_ndk_is_a_clear_invalid_input_error(cli, conv_relu, tmp_path, monkeypatch):
    monkeypatch.delenv("ANDROID_NDK_HOME", raising=False)
    r = cli("compile", conv_relu, "-o", tmp_path / "out", "--target", "android-arm64")
    assert r.code == ExitCode.INVALID == 2
    assert "needs the Android NDK: pass --ndk PATH or set ANDROID_NDK_HOME" in r.err
    assert not (tmp_path / "out").exists()
    # a directory that is not an NDK names what is missing
    r = cli("compile", conv_relu, "-o", tmp_path / "out", "-t", "android-arm64", "--ndk", tmp_path)
    assert r.code == 2 and "is not an Android NDK: no toolchains/llvm/prebuilt" in r.err


def test_ndk_compiler_is_found_in_an_ndk_layout(tmp_path, monkeypatch):
    bindir = tmp_path / "toolchains" / "llvm" / "prebuilt" / "linux-x86_64" / "bin"
    bindir.mkdir(parents=True)
    for api in (21, 24, 33):
        (bindir / f"aarch64-linux-android{api}-clang++").touch()
    monkeypatch.setenv("ANDROID_NDK_HOME", str(tmp_path))
    assert toolchain.compiler(targets.get("android-arm64")).endswith("android24-clang++")
