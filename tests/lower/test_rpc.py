"""A device farm on loopback: a TVM tracker, two x86 servers and one arm64 server under qemu."""

import json
import math
import shutil
import socket
import subprocess
import sys
import time

import pytest

import edgec
from edgec import targets
from edgec.deploy import toolchain
from edgec.report import latency

pytestmark = pytest.mark.skipif(
    toolchain.emulator(targets.get("arm64")) is None or not shutil.which("aarch64-linux-gnu-g++"),
    reason="needs the arm64 cross toolchain and qemu-user: make cross-toolchain",
)
SHAPE = {"x": (1, 3, 16, 16)}
STATS = set(latency.stats([0.001, 0.002], 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ok, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, f"{what}: not ready within {timeout_s:g} s"
        time.sleep(1)


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    pytest.importorskip("tornado")
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    tracker = Tracker("127.0.0.1", port=_free_port(), port_end=65000, silent=True)
    addr = f"127.0.0.1:{tracker.port}"
    servers = {}
    for name, key, extra in (("x86-a", "x86", []), ("x86-b", "x86", []),
                             ("arm", "arm64", ["--emulate", "arm64"])):  # fmt: skip
        cmd = [sys.executable, "-m", "edgec.cli", "-q", "device", "serve", "--host", "127.0.0.1",
               "--port", str(_free_port()), "--tracker", addr, "--key", key, *extra]  # fmt: skip
        servers[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def registered() -> bool:
        q = rpc.connect_tracker("127.0.0.1", tracker.port).summary()["queue_info"]
        return q.get("x86", {}).get("free") == 2 and q.get("arm64", {}).get("free") == 1

    try:
        _wait("three servers registered with the tracker", registered)
        root = tmp_path_factory.mktemp("farm")
        conv = root / "conv.onnx"
        import onnx

        from tests.conftest import conv_relu_model

        onnx.save(conv_relu_model(dynamic_batch=False), conv)
        for target in ("x86_64", "arm64"):
            edgec.compile(conv, root / target, target=target, bench=False, verify_result=False)
        yield {"tracker": addr, "root": root, "servers": servers}
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
        tracker.terminate()


def _bench(cli, *args):
    r = cli("-q", "bench", *map(str, args), "--runs", "5", "--json")
    return r.code, json.loads(r.out) if r.out.strip() else None, r.err


def test_tracker_spreads_x86_measurements_over_both_free_devices(cli, farm):
    code, result, err = _bench(cli, farm["root"] / "x86_64", "--tracker", farm["tracker"],
                               "--key", "x86")  # fmt: skip
    assert code == 0, err
    assert len(result["devices"]) == 2 and result["failed"] == []
    for report in result["devices"]:
        assert set(report["edgec"]) == STATS and report["edgec"]["runs"] == 5
        assert report["device"]["arch"] == "x86_64" and report["device"]["emulated"] is None
        assert report["verification"]["passed"] and report["verification"]["scaled_err"] <= 1e-4


def test_arm64_artifact_runs_on_the_emulated_arm64_server(cli, farm):
    code, result, err = _bench(cli, farm["root"] / "arm64", "--tracker", farm["tracker"],
                               "--key", "arm64")  # fmt: skip
    assert code == 0, err
    (report,) = result["devices"]
    assert report["device"]["arch"] == "aarch64" and report["device"]["emulated"] == "qemu-aarch64"
    assert set(report["edgec"]) == STATS and report["threads"] >= 1
    assert report["verification"]["passed"] and report["verification"]["scaled_err"] <= 1e-4
    assert result["target"] == "arm64"


def test_kernel_search_times_candidates_on_the_device(farm, tmp_path):
    """`edgec compile --target arm64 --search ... --tracker`: candidates timed over RPC."""
    from edgec import search

    db = tmp_path / "t.db"
    result = edgec.compile(
        farm["root"] / "conv.onnx", tmp_path / "out", target="arm64", search="fast",
        search_budget_s=6, tuning_db=db, tracker=farm["tracker"], key="arm64",
        conv_algo="direct",  # the knob search alone (auto would also time other algorithms)
    )  # fmt: skip
    s = result.report["search"]
    assert s["kernels_measured"] == 1 and s["candidates_tried"] >= 2 and "skipped" not in s
    (conv,) = [k for k in result.report["kernels"] if k.get("candidates")]
    timed = [c["ms"] for c in conv["candidates"] if c["ms"] is not None]
    assert len(timed) >= 2 and math.isclose(conv["ms"], min(timed))
    assert result.report["verification"]["passed"]  # the chosen knobs, under qemu
    (entry,) = search.cache_info(db)["by_version"]
    assert entry["cpu"].endswith("(aarch64, via RPC, emulated by qemu-aarch64)")


def test_wrong_architecture_is_reported_not_run(cli, farm):
    code, result, _ = _bench(cli, farm["root"] / "arm64", "--tracker", farm["tracker"],
                             "--key", "x86", "--devices", "1")  # fmt: skip
    assert code == 1 and result["devices"] == []
    assert "the device is x86_64, the artifact is for aarch64" in result["failed"][0]["errors"][0]


def test_direct_rpc_to_the_bundle_runner_without_python(cli, farm):
    """`./edgec-run --serve PORT` on a board: the bundle alone is an RPC server."""
    port = _free_port()
    bundle = farm["root"] / "x86_64"
    server = subprocess.Popen(["./edgec-run", "--serve", str(port), "--host", "127.0.0.1"],
                              cwd=bundle, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(0.5)
        code, result, err = _bench(cli, bundle, "--rpc", f"127.0.0.1:{port}")
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert code == 0, err
    (report,) = result["devices"]
    assert report["verification"]["passed"] and report["edgec"]["runs"] == 5


def test_lost_devices_are_retried_and_reported_without_hanging(cli, farm):
    t0 = time.monotonic()
    code, result, _ = _bench(cli, farm["root"] / "x86_64", "--rpc", f"127.0.0.1:{_free_port()}",
                             "--timeout", "5", "--retries", "2")  # fmt: skip
    assert code == 1 and result["devices"] == []
    assert len(result["failed"][0]["errors"]) == 3  # the first try and 2 retries
    # a server that goes away: the tracker forgets it, the other one still measures
    farm["servers"]["x86-b"].terminate()
    farm["servers"]["x86-b"].wait(timeout=30)
    code, result, err = _bench(cli, farm["root"] / "x86_64", "--tracker", farm["tracker"],
                               "--key", "x86", "--devices", "1", "--timeout", "30")  # fmt: skip
    assert code == 0 and len(result["devices"]) == 1, err
    # no free device for a key: each try times out, nothing hangs
    code, result, _ = _bench(cli, farm["root"] / "x86_64", "--tracker", farm["tracker"],
                             "--key", "rk3588", "--timeout", "4", "--retries", "1")  # fmt: skip
    assert code == 1 and result["devices"] == []
    assert "no answer within 4 s" in result["failed"][0]["errors"][-1]
    assert time.monotonic() - t0 < 90
