"""Tuning on an RPC fleet (``tvmforge.tuning.fleet``): a real TVM tracker and real servers on
127.0.0.1 (two x86 servers, one aarch64 server under qemu), no mocks."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import onnx
import pytest

from onnx_builders import conv_relu_model
from tvmforge.errors import InputError
from tvmforge.tuning import fleet
from tvmforge.tuning import tune as tuning


def _records(db: Path) -> list[dict]:
    lines = (db / tuning.RECORDS).read_text().splitlines()
    return [json.loads(ln) for ln in lines if ln.strip()]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    with fleet.LoopbackFleet(tmp_path_factory.mktemp("fleet-logs"), threads=1) as lf:
        lf.add_server("x86")
        lf.add_server("x86")
        yield lf


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9190", ("127.0.0.1", 9190)), ("boards.lan:9000", ("boards.lan", 9000)),
     ("[::1]:9190", ("::1", 9190))],
)
def test_parse_tracker(text, expected):
    assert fleet.parse_tracker(text) == expected


@pytest.mark.parametrize("text", ["9190", "host:", ":9190", "host:port", "host:70000"])
def test_parse_tracker_refuses(text):
    with pytest.raises(InputError, match="is not HOST:PORT"):
        fleet.parse_tracker(text)


def test_no_tracker_is_one_line_at_once(cli, tmp_path):
    onnx.save(conv_relu_model(), tmp_path / "m.onnx")
    port = _closed_port()
    t0 = time.monotonic()
    res = cli("tune", tmp_path / "m.onnx", "--trials", "1", "--rpc-tracker",
              f"127.0.0.1:{port}", "--rpc-key", "x86")
    assert time.monotonic() - t0 < 30  # not TVM's minute of retries
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert lines[-1].startswith(f"error: no RPC tracker answers at 127.0.0.1:{port}")
    assert "Traceback" not in res.output
    res = cli("tune", tmp_path / "m.onnx", "--trials", "1", "--rpc-key", "x86")
    assert res.exit_code == 2 and "--rpc-tracker and --rpc-key go together" in res.output


def test_targets_lists_the_fleet(cli, loopback):
    res = cli("targets", "--rpc-tracker", f"127.0.0.1:{loopback.port}")
    assert res.exit_code == 0, res.output
    assert "x86: 2 device(s), 2 free" in res.output
    for addr in loopback.servers:
        assert f"    {addr}" in res.output
    res = cli("targets", "--rpc-tracker", f"127.0.0.1:{loopback.port}", "--json")
    data = json.loads(res.output)
    assert sorted(data["keys"]["x86"]["servers"]) == sorted(loopback.servers)


def test_unknown_key_names_the_keys_there(loopback):
    with pytest.raises(InputError, match=r"no device under key 'rasp4' \(keys it has: x86 \(2\)"):
        tuning.tune(conv_relu_model(), "x86", trials=1, work_dir="unused",
                    rpc=loopback.fleet("rasp4"))


def test_tune_on_two_x86_servers(loopback, tmp_path, cli):
    """Every candidate is measured on the fleet, both servers take some, and the records land
    under the target's tuning key and apply to a compile."""
    res = tuning.tune(conv_relu_model(), "x86", trials=8, work_dir=tmp_path / "logs",
                      rpc=loopback.fleet("x86"), threads=1)
    kernels = len(res.tasks)
    assert res.database.name == tuning._resolve_target("x86", 1).tuning_key
    assert sum(res.devices.values()) == res.trials + kernels  # the defaults, then the trials
    assert sorted(res.devices) == sorted(loopback.servers)
    assert all(n > 0 for n in res.devices.values())
    recs = _records(res.database)
    assert len(recs) == res.records_after > kernels
    onnx.save(conv_relu_model(), tmp_path / "m.onnx")
    out = cli("compile", tmp_path / "m.onnx", "--threads", "1", "--tuning-log", tmp_path / "logs")
    assert out.exit_code == 0, out.output
    assert f"tuning records: {kernels} of {kernels} kernels" in out.output


def test_tune_arm_on_an_emulated_device(loopback, aarch64_root, tmp_path):
    """A Neoverse-N1 target tuned through an aarch64 server under qemu: the candidates are
    cross-compiled and linked here, measured there."""
    addr = loopback.add_server("arm-n1", qemu_cpu="neoverse-n1")
    res = tuning.tune(conv_relu_model(), "arm:neoverse-n1", trials=5,
                      work_dir=tmp_path / "logs", rpc=loopback.fleet("arm-n1"), threads=1)
    assert res.database == tmp_path / "logs" / "arm-neoverse-n1-dotprod"
    assert res.devices == {addr: res.trials + len(res.tasks)}
    assert all(t.errors == 0 for t in res.tasks)
    assert res.records_after > len(res.tasks)
    log = (loopback.logs / f"server-arm-n1-{addr.rsplit(':', 1)[1]}.log").read_text()
    assert "start serving" in log


def test_arm_tuning_without_a_fleet_is_refused_here():
    with pytest.raises(InputError, match="tuning measures every candidate on this"):
        tuning.tune(conv_relu_model(), "arm:neoverse-n1", trials=1, work_dir="unused")


@pytest.mark.slow
def test_a_server_killed_mid_tune_leaves_the_other(tmp_path):
    """One of two devices dies after the first measured batch: the tune goes on to its end on
    the other, and every record it kept was measured there or before the kill."""
    with fleet.LoopbackFleet(tmp_path / "fleet-logs", threads=1) as lf:
        first = lf.add_server("x86")
        second = lf.add_server("x86")
        killed: list[str] = []

        def on_batch(info) -> None:
            if not killed:
                lf.kill_server(first)
                killed.append(first)

        res = tuning.tune(conv_relu_model(), "x86", trials=24, work_dir=tmp_path / "logs",
                          rpc=lf.fleet("x86", session_timeout=20), threads=1,
                          on_batch=on_batch)
        assert killed
        assert res.trials == 24
        assert res.devices.get(second, 0) > res.devices.get(first, 0)
        assert fleet.devices(lf.summary())["x86"]["servers"] == [second]
        assert res.records_after - res.records_before >= 24 - sum(t.errors for t in res.tasks)
