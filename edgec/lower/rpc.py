"""Devices over TVM RPC: a device server, and latency measured on remote boards.

Server (``edgec device serve``): TVM's own accept loop and tracker registration
(``tvm.rpc.server``), but every session runs in an ``edgec-run --rpc-fd`` process: the C++ runner
of the deploy bundle serves the TVM RPC protocol with only the TVM runtime. So a session needs no
Python, a session that hangs is killed at its timeout, and the same server can run an arm64 runner
under qemu-user (``--emulate arm64``: correctness only, for tests and CI).

Client (``edgec bench OUT --rpc HOST:PORT`` or ``--tracker HOST:PORT --key KEY``): uploads the
library, times it with the runtime's time evaluator on the device, checks its outputs against
onnxruntime, and reads the device description (``edgec.device_info``, registered by edgec-run).
With a tracker the measurement runs on every free device with that key in parallel. Every step
has a deadline; lost devices and timeouts are retried (``retries``) and reported, never waited on
forever.
"""

from __future__ import annotations

import contextlib
import gc
import json
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgec.errors import InvalidInputError
from edgec.lower import _tvm
from edgec.report import latency

Log = Callable[[str], None]
UNKNOWN_DEVICE = {"cpu": "unknown (a plain TVM RPC server: no edgec.device_info)"}


def parse_address(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidInputError(f"{what} must be HOST:PORT, not {text!r}")
    return host, int(port)


# ---- server ------------------------------------------------------------------------------------


def serve(
    host: str,
    port: int,
    session: Sequence[str],
    *,
    tracker: tuple[str, int] | None = None,
    key: str = "",
    session_timeout_s: float = 0.0,
    log: Log = print,
) -> None:
    """Serve TVM RPC on ``host:port`` until interrupted; each session runs ``session + ["--rpc-fd",
    FD, "--workdir", DIR]`` (an edgec-run command, maybe under qemu)."""
    _tvm()
    from tvm.rpc import server as tvm_server

    def serving(conn: socket.socket, addr, opts: dict, _load_library) -> None:
        timeout = opts.get("timeout") or session_timeout_s or None
        with tempfile.TemporaryDirectory(prefix="edgec-session-") as work:
            cmd = [*session, "--rpc-fd", str(conn.fileno()), "--workdir", work]
            log(f"session from {addr[0]}:{addr[1]}")
            proc = subprocess.Popen(cmd, pass_fds=(conn.fileno(),), cwd=work)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"session from {addr[0]} exceeded {timeout:g} s: killed")
                proc.kill()
                proc.wait()
        conn.close()

    # TVM's loop does the handshake and the tracker protocol; the session is ours (TVM 0.27 API).
    tvm_server._serving = serving
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise InvalidInputError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    sock.listen(4)
    where = f", registered with tracker {tracker[0]}:{tracker[1]} as {key!r}" if tracker else ""
    log(f"edgec device server on {host}:{sock.getsockname()[1]}{where}")
    tvm_server._listen_loop(sock, sock.getsockname()[1], key, tracker, None, None)


def tracker(host: str, port: int, log: Log = print) -> None:
    """Run a TVM RPC tracker until interrupted."""
    _tvm()
    from tvm.rpc.tracker import Tracker

    t = Tracker(host, port=port, port_end=port + 1, silent=True)
    log(f"TVM RPC tracker on {host}:{t.port}")
    # SIGTERM ends the tracker's worker process too (TVM runs it in a child)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    finally:
        t.terminate()


def free_devices(tracker_addr: tuple[str, int], key: str, timeout_s: float = 10.0) -> int:
    """How many servers with ``key`` the tracker has free right now."""
    summary = _with_deadline(lambda: _tracker(tracker_addr).summary(), timeout_s, "tracker")
    return int(summary.get("queue_info", {}).get(key, {}).get("free", 0))


# ---- client ------------------------------------------------------------------------------------


def _tracker(addr: tuple[str, int]):
    from tvm import rpc

    return rpc.connect_tracker(*addr)


def _with_deadline(fn: Callable, timeout_s: float, what: str):
    """``fn()`` in a daemon thread; TimeoutError if it takes longer (the thread is abandoned:
    a device that stops answering must not hang edgec)."""
    box: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            box.put((True, fn()))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box.put((False, e))

    threading.Thread(target=work, daemon=True).start()
    try:
        ok, value = box.get(timeout=timeout_s)
    except queue.Empty:
        raise TimeoutError(f"{what}: no answer within {timeout_s:g} s") from None
    if not ok:
        raise value
    return value


def measure_session(
    sess, library: Path, inputs: Sequence[np.ndarray], *, runs: int, warmup: int
) -> tuple[dict, list[np.ndarray]]:
    """Upload ``library`` to an RPC session, time ``main`` ``runs`` times after ``warmup`` calls;
    returns the latency report and the outputs."""
    tvm = _tvm()
    from tvm.runtime.vm import VirtualMachine

    name = f"edgec-{library.stat().st_ino}-{library.name}"
    sess.upload(str(library), target=name)
    dev = sess.cpu()
    vm = VirtualMachine(sess.load_module(name), dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs]
    vm.set_input("main", *args)
    for _ in range(warmup):
        vm.invoke_stateful("main")
    timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=runs)
    samples = list(timer("main").results)
    outs = vm.get_outputs("main")
    outputs = [t.numpy() for t in (outs if isinstance(outs, (list, tuple)) else _flat(outs))]
    del vm, args, outs  # free the remote objects before the session closes
    info = _device_info(sess)
    threads = _remote_threads(sess)
    report = {
        "threads": threads,
        "method": f"TVM RPC time evaluator on the device: {warmup} untimed calls, then {runs} "
        "timed calls (one per repeat)",
        "edgec": latency.stats(samples, warmup),
        "device": info,
    }
    return report, outputs


def _flat(value) -> list:
    if hasattr(value, "numpy"):
        return [value]
    return [t for item in value for t in _flat(item)]


def _close(sess) -> None:
    """End the session now (not when the garbage collector gets to it): the device is freed
    for the next client at once."""
    gc.collect()
    with contextlib.suppress(Exception):  # already gone
        sess.get_function("CloseRPCConnection")()


def _device_info(sess) -> dict:
    try:
        return json.loads(str(sess.get_function("edgec.device_info")()))
    except Exception:  # noqa: BLE001 - not an edgec-run server
        return dict(UNKNOWN_DEVICE)


def _remote_threads(sess) -> int | None:
    try:
        return int(sess.get_function("runtime.NumThreads")())
    except Exception:  # noqa: BLE001
        return None


def bench(
    library: Path,
    inputs: Sequence[np.ndarray],
    *,
    rpc: str | None = None,
    tracker_addr: str | None = None,
    key: str = "",
    devices: int = 0,
    runs: int = 20,
    warmup: int = 2,
    timeout_s: float = 120.0,
    retries: int = 1,
    check: Callable[[list[np.ndarray]], dict] | None = None,
    expect_arch: str | None = None,
    log: Log = print,
) -> dict:
    """Latency of ``library`` on one RPC server (``rpc``) or on the free devices of a tracker
    (``tracker_addr`` + ``key``; ``devices`` of them, 0 = all free ones, at least 1).

    Each device attempt has ``timeout_s`` (connect + upload + measurement); a failed or lost
    device is retried ``retries`` times (through the tracker: on any free device). ``check``
    compares the outputs with onnxruntime."""
    from tvm import rpc as tvm_rpc

    if (rpc is None) == (tracker_addr is None):
        raise InvalidInputError("give exactly one of --rpc HOST:PORT and --tracker HOST:PORT")
    if tracker_addr is not None and not key:
        raise InvalidInputError("--tracker needs --key (the device key the servers registered)")
    if rpc is not None:
        addr = parse_address(rpc, "--rpc")
        n, where = 1, f"{addr[0]}:{addr[1]}"

        def connect():
            return tvm_rpc.connect(*addr, session_timeout=timeout_s)
    else:
        taddr = parse_address(tracker_addr, "--tracker")
        where = f"tracker {taddr[0]}:{taddr[1]}, key {key!r}"
        n = devices or max(1, _try_free(taddr, key, timeout_s))

        def connect():
            return _tracker(taddr).request(key, session_timeout=timeout_s, max_retry=1)

    log(f"measuring on {n} device(s) ({where}) ...")
    results: list[dict | None] = [None] * n
    threads = [
        threading.Thread(
            target=_device_worker,
            args=(
                i,
                connect,
                library,
                inputs,
                runs,
                warmup,
                timeout_s,
                retries,
                check,
                expect_arch,
                results,
                log,
            ),
            daemon=True,
        )  # fmt: skip
        for i in range(n)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s * (retries + 1) + 10
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    reports, failed = [], []
    for i, r in enumerate(results):
        if r is None:
            failed.append({"device": i, "errors": [f"no result within {timeout_s:g} s per try"]})
        elif "edgec" in r:
            reports.append(r)
        else:
            failed.append(r)
    return {"remote": where, "devices": reports, "failed": failed}


def _try_free(taddr, key: str, timeout_s: float) -> int:
    try:
        return free_devices(taddr, key, min(timeout_s, 10.0))
    except (OSError, TimeoutError, RuntimeError) as e:
        raise InvalidInputError(f"cannot reach the tracker {taddr[0]}:{taddr[1]}: {e}") from e


def _device_worker(i, connect, library, inputs, runs, warmup, timeout_s, retries, check,
                   expect_arch, results, log) -> None:  # fmt: skip
    errors: list[str] = []
    for attempt in range(retries + 1):
        try:

            def once():
                sess = connect()
                try:
                    info = _device_info(sess)
                    if expect_arch and info.get("arch") not in (None, expect_arch):
                        raise InvalidInputError(
                            f"the device is {info['arch']}, the artifact is for {expect_arch}"
                        )
                    return measure_session(sess, library, inputs, runs=runs, warmup=warmup)
                finally:
                    _close(sess)

            report, outputs = _with_deadline(once, timeout_s, f"device {i}")
        except InvalidInputError as e:
            errors.append(str(e))
            break
        except Exception as e:  # noqa: BLE001 - lost device, timeout, busy tracker: retry
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            errors.append(f"attempt {attempt + 1}: {type(e).__name__}: {first}")
            log(f"device {i}: {errors[-1]}" + (" (retrying)" if attempt < retries else ""))
            time.sleep(min(2.0, timeout_s / 10))
            continue
        report["attempts"] = attempt + 1
        if errors:
            report["errors"] = errors
        if check is not None:
            report["verification"] = check(outputs)
        results[i] = report
        return
    results[i] = {"device": i, "errors": errors}


# ---- the kernel search on a device ----------------------------------------------------------


class RemoteMeasure:
    """``edgec.lower.measure``'s interface (``cpu_model``, ``versions``, ``prepare``, ``measure``,
    ``outputs``) with every candidate cross-linked by ``compiler``, uploaded and run on an RPC
    device (one session, reopened after a failure). A failed or timed-out candidate raises, so
    the search scores it as infinitely slow and goes on."""

    def __init__(self, connect: Callable, compiler: str, timeout_s: float = 60.0):
        self._connect, self.compiler, self.timeout_s = connect, compiler, timeout_s
        self._sess, self.info, self._n = None, dict(UNKNOWN_DEVICE), 0

    def _session(self):
        if self._sess is None:
            self._sess = _with_deadline(self._connect, self.timeout_s, "device")
            self.info = _device_info(self._sess)
        return self._sess

    def _remote(self, fn: Callable, what: str):
        try:
            return _with_deadline(fn, self.timeout_s, what)
        except Exception:
            self._sess = None  # lost or stuck: the next candidate reconnects
            raise

    def close(self) -> None:
        if self._sess is not None:
            _close(self._sess)
            self._sess = None

    def cpu_model(self) -> str:
        self._remote(self._session, "device")
        cpu, arch = self.info.get("cpu", "?"), self.info.get("arch", "?")
        emulated = f", emulated by {self.info['emulated']}" if self.info.get("emulated") else ""
        return f"{cpu} ({arch}, via RPC{emulated})"

    def versions(self) -> dict[str, str]:
        from edgec.lower import measure

        return measure.versions()

    def prepare(self, threads: int) -> int:
        return 0  # the device's runtime keeps its own thread pool

    def _upload(self, lib):
        from tvm.support import cc

        self._n += 1
        with tempfile.TemporaryDirectory(prefix="edgec-cand-") as tmp:
            path = Path(tmp) / f"cand{self._n}.so"
            lib.export_library(str(path), fcompile=cc.cross_compiler(self.compiler))
            sess = self._session()
            sess.upload(str(path), target=path.name)
            return sess, sess.load_module(path.name)

    def measure(self, task, knobs: dict, target: dict, *, repeat: int = 3,
                min_repeat_ms: int = 25, seed: int = 0) -> float:  # fmt: skip
        tvm = _tvm()
        from edgec.lower import measure

        lib, func = measure._timed_lib(task, knobs, tvm.target.Target(target))
        arrays = measure._arrays(func, seed)

        def run() -> float:
            sess, rlib = self._upload(lib)
            dev = sess.cpu()
            args = [tvm.runtime.tensor(a, dev) for a in arrays]
            timer = rlib.time_evaluator(
                "main", dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms
            )
            return float(np.min(timer(*args).results))

        return self._remote(run, f"candidate on {self.info.get('cpu', 'the device')}")

    def outputs(self, task, knobs: dict, target: dict, *, seed: int = 0) -> list[np.ndarray]:
        tvm = _tvm()
        from edgec.lower import measure

        tgt = tvm.target.Target(target)
        scheduled = measure._template(task.template).apply(task.func, task.info, knobs)
        mod = tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")})
        with tgt:
            lib = tvm.tirx.build(mod, target=tgt)
        written = measure._written(task.func)
        arrays = measure._arrays(task.func, seed, tuple(written))

        def run() -> list[np.ndarray]:
            sess, rlib = self._upload(lib)
            dev = sess.cpu()
            args = [tvm.runtime.tensor(a, dev) for a in arrays]
            rlib["main"](*args)
            return [args[i].numpy() for i in written]

        return self._remote(run, "candidate outputs")


def remote_measure(rpc: str | None, tracker_addr: str | None, key: str, compiler: str,
                   timeout_s: float = 60.0) -> RemoteMeasure:  # fmt: skip
    """A RemoteMeasure on one RPC server, or on one device of a tracker's pool."""
    from tvm import rpc as tvm_rpc

    if rpc is not None:
        addr = parse_address(rpc, "--rpc")
        return RemoteMeasure(lambda: tvm_rpc.connect(*addr), compiler, timeout_s)
    if not key:
        raise InvalidInputError("--tracker needs --key (the device key the servers registered)")
    taddr = parse_address(tracker_addr, "--tracker")
    return RemoteMeasure(lambda: _tracker(taddr).request(key, max_retry=1), compiler, timeout_s)
