"""The deploy bundle: everything a board needs to run an artifact, with no Python on it.

OUT/ gets, beside ``model.so``: ``libtvm_runtime.so`` and ``libtvm_ffi.so`` built for the target's
architecture (taken from the pinned apache-tvm / apache-tvm-ffi PyPI wheels for that platform,
downloaded once into edgec's cache) and ``edgec-run`` (edgec_run.cc, built with the target's C++
compiler, cached by a hash of its inputs). ``run_bundle`` runs it here, natively or under
qemu-user. This module does not import tvm.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from edgec import host
from edgec.errors import EdgecError, InvalidInputError, VerificationError
from edgec.targets import Target

RUNNER = "edgec-run"
RUNNER_SOURCE = Path(__file__).with_name("edgec_run.cc")
RUNTIME_LIBS = ("libtvm_runtime.so", "libtvm_ffi.so")
# where each library sits in which wheel
_IN_WHEEL = {
    "libtvm_runtime.so": ("apache_tvm-", "tvm/lib/"),
    "libtvm_ffi.so": ("apache_tvm_ffi-", "tvm_ffi/lib/"),
}
WHEEL_PLATFORMS = {"aarch64": "manylinux_2_28_aarch64", "x86_64": "manylinux_2_28_x86_64"}

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def pinned_versions() -> dict[str, str]:
    """The installed (pinned) apache-tvm and apache-tvm-ffi versions: the bundle uses the same."""
    return {
        "apache-tvm": importlib.metadata.version("apache-tvm"),
        "apache-tvm-ffi": importlib.metadata.version("apache-tvm-ffi"),
    }


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EdgecError(f"the {name} Python package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def ffi_include_dir() -> Path:
    return _package_dir("tvm_ffi") / "include"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock (another edgec may fill the same cache entry at the same time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def runtime_libs(arch: str, log: Log = _quiet) -> dict[str, Path]:
    """libtvm_runtime.so and libtvm_ffi.so for ``arch``: the installed ones for this machine's
    architecture, else extracted from the pinned PyPI wheels (downloaded once, cached)."""
    if arch == platform.machine():
        return {
            "libtvm_runtime.so": _package_dir("tvm") / "lib" / "libtvm_runtime.so",
            "libtvm_ffi.so": _package_dir("tvm_ffi") / "lib" / "libtvm_ffi.so",
        }
    if arch not in WHEEL_PLATFORMS:
        raise InvalidInputError(f"no TVM runtime wheels for {arch} on PyPI")
    v = pinned_versions()
    cache = host.cache_dir() / "runtime" / f"tvm-{v['apache-tvm']}-ffi-{v['apache-tvm-ffi']}-{arch}"
    libs = {name: cache / name for name in RUNTIME_LIBS}
    with _locked(cache.with_name(cache.name + ".lock")):
        if not all(p.is_file() for p in libs.values()):
            _fetch_runtime_libs(arch, v, cache, log)
    return libs


def _fetch_runtime_libs(arch: str, versions: dict[str, str], cache: Path, log: Log) -> None:
    plat = WHEEL_PLATFORMS[arch]
    log(f"downloading the {arch} TVM runtime (pip download, {plat}; cached in {cache}) ...")
    with tempfile.TemporaryDirectory(prefix="edgec-wheels-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "--platform", plat, "--python-version",
               f"{sys.version_info.major}.{sys.version_info.minor}", "-d", tmp,
               *(f"{name}=={version}" for name, version in versions.items())]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired as e:
            raise EdgecError(f"downloading the {arch} TVM runtime timed out") from e
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["pip failed"]
            raise EdgecError(
                f"cannot download the {arch} TVM runtime wheels ({', '.join(versions)} for "
                f"{plat}): {tail[0]}. It needs PyPI access once; it is cached in {cache}"
            )
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache.parent))
        try:
            for name, (wheel_prefix, member_dir) in _IN_WHEEL.items():
                wheel = next(Path(tmp).glob(f"{wheel_prefix}[0-9]*.whl"))
                with zipfile.ZipFile(wheel) as z, open(staging / name, "wb") as f:
                    f.write(z.read(member_dir + name))
            if cache.exists():
                shutil.rmtree(cache)
            staging.rename(cache)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def build_runner(target: Target, compiler: str, libs: dict[str, Path], log: Log = _quiet) -> Path:
    """edgec-run for ``target``, built with ``compiler`` (cached by source, compiler, runtime)."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    flags = ["-O2", "-std=c++17", "-s", "-Wl,-rpath,$ORIGIN"]
    key = hashlib.sha256(
        json.dumps([RUNNER_SOURCE.read_text(), Path(compiler).name, version.split("\n")[0],
                    pinned_versions(), flags, target.arch]).encode()
    ).hexdigest()[:16]  # fmt: skip
    path = host.cache_dir() / "runner" / f"{target.arch}-{key}" / RUNNER
    with _locked(path.parent.with_name(path.parent.name + ".lock")):
        if path.is_file():
            return path
        log(f"building {RUNNER} for {target.arch} with {Path(compiler).name} ...")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{RUNNER}.tmp")
        lib_dirs = sorted({str(p.parent) for p in libs.values()})
        cmd = [compiler, *flags, str(RUNNER_SOURCE), "-I", str(ffi_include_dir()),
               *(f"-L{d}" for d in lib_dirs), *(f"-Wl,-rpath-link,{d}" for d in lib_dirs),
               "-ltvm_runtime", "-ltvm_ffi", "-o", str(tmp)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise EdgecError(f"building {RUNNER} failed:\n{proc.stderr.strip()[-2000:]}")
        tmp.replace(path)
    return path


def write_bundle(out: Path, target: Target, compiler: str, log: Log = _quiet) -> dict:
    """Put the runtime libraries and edgec-run for ``target`` into ``out`` (beside model.so);
    returns the manifest's ``bundle`` section."""
    libs = runtime_libs(target.arch, log)
    runner = build_runner(target, compiler, libs, log)
    for name, src in {**libs, RUNNER: runner}.items():
        shutil.copy2(src, out / name)
    return {
        "files": [RUNNER, *RUNTIME_LIBS],
        "runner": RUNNER,
        "runtime": {**pinned_versions(), "platform": WHEEL_PLATFORMS.get(target.arch)},
        "usage": f"./{RUNNER} ./model.so -i INPUT.npy ... -o OUTPUT.npy ... --runs 50 "
        "--warmup 5 --report latency.json",
    }


def run_bundle(
    bundle: Path,
    library: str,
    inputs: Sequence[np.ndarray],
    *,
    emulator: Sequence[str] = (),
    runs: int = 0,
    warmup: int = 0,
    threads: int = 0,
    timeout_s: float = 600.0,
) -> tuple[list[np.ndarray], dict | None]:
    """Run ``bundle``'s edgec-run on ``inputs`` (under ``emulator`` if given); returns the outputs
    and its latency report (None when ``runs`` is 0)."""
    bundle = Path(bundle).resolve()
    with tempfile.TemporaryDirectory(prefix="edgec-run-") as tmp:
        work = Path(tmp)
        args = []
        for i, arr in enumerate(inputs):
            np.save(work / f"input{i}.npy", np.ascontiguousarray(arr))
            args += ["-i", str(work / f"input{i}.npy")]
        cmd = [*emulator, str(bundle / RUNNER), str(bundle / library), *args,
               "--runs", str(runs), "--warmup", str(warmup)]  # fmt: skip
        if runs:
            cmd += ["--report", str(work / "latency.json")]
        if threads:
            cmd += ["--threads", str(threads)]
        try:
            proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            raise VerificationError(f"{RUNNER} did not finish within {timeout_s:g} s") from e
        if proc.returncode != 0:
            raise VerificationError(
                f"{RUNNER} failed (exit {proc.returncode}):\n{proc.stderr.strip()[-2000:]}"
            )
        outputs = []
        for i in range(len(list(work.glob("output*.npy")))):
            outputs.append(np.load(work / f"output{i}.npy"))
        report = json.loads((work / "latency.json").read_text()) if runs else None
    return outputs, report


ANDROID_RUNTIME = (
    "no TVM runtime for Android on PyPI (the manylinux wheels need glibc): build libtvm_runtime.so "
    "with the NDK, or use TVM's Android RPC app (docs/deploy.md)"
)
EMULATED_LATENCY = (
    "emulated: correctness only (qemu timings are not device latency); measure on the device: "
    "edgec bench OUT --rpc HOST:PORT, or ./edgec-run on the board"
)


def bundle(out: Path, target: Target, compiler: str | None, log: Log = _quiet) -> dict:
    """The deploy bundle for a CPU target in ``out``; its manifest section."""
    from edgec.deploy import toolchain

    if target.toolchain == "ndk":
        return {"skipped": ANDROID_RUNTIME}
    return write_bundle(out, target, compiler or toolchain.compiler(target), log)


def remove_bundle(out: Path, section: dict) -> None:
    for name in section.get("files", []):
        (out / name).unlink(missing_ok=True)


def emulated_runner(bundle_dir: Path, emulator: Sequence[str]):
    """A ``run(arrays) -> outputs`` that executes the bundle's edgec-run under ``emulator``."""
    return lambda arrays: run_bundle(bundle_dir, "model.so", arrays, emulator=emulator)[0]


def check_cuda(executable, target: Target, library: Path, verify: Callable) -> dict:
    """CUDA verification: run and compare when a CUDA GPU is here (``verify(lib_dir, run)``),
    else compile the device code to cubin with nvcc."""
    from edgec.lower import gpu

    if gpu.gpu_present("cuda"):
        return verify(library.parent, gpu.runtime(library).run)
    return {**gpu.validate_cuda(executable, target.gpu), "run": "skipped: no CUDA GPU here"}


def device_runner(target: Target, log: Log = _quiet) -> list[str]:
    """The command that runs edgec-run for ``target`` on this machine: natively, or under the
    target's emulator (then marked ``--emulated``: its timings are not device latency)."""
    from edgec.deploy import toolchain

    emulator = None if target.runs_here else toolchain.require_emulator(target)
    libs = runtime_libs(target.arch, log)
    runner = build_runner(target, toolchain.compiler(target), libs, log)
    home = runner.parent / "bundle"  # runner and runtime side by side (rpath $ORIGIN)
    with _locked(runner.parent / "bundle.lock"):
        if not (home / RUNNER).is_file():
            staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=runner.parent))
            for name, src in {**libs, RUNNER: runner}.items():
                shutil.copy2(src, staging / name)
            staging.rename(home)
    if emulator is None:
        return [str(home / RUNNER)]
    return [*emulator, str(home / RUNNER), "--emulated", target.emulator]
