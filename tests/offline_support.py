"""Offline guard for the tests of optional real-world stacks (ultralytics, timm): an autouse fixture under which a
test fails if this process, or a CLI subprocess it starts, resolves a host name or connects anywhere."""
import os
import socket

import pytest

# a process that imports this (sitecustomize) fails on any network use and leaves its name in GP_NETWORK_LOG
NO_NETWORK = """
import os, socket
def _refuse(*args, **kwargs):
    with open(os.environ["GP_NETWORK_LOG"], "a") as f:
        f.write(repr(args[:2]) + "\\n")
    raise OSError("network use in a test that must stay offline")
socket.getaddrinfo = _refuse
socket.socket.connect = _refuse
"""


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Every test here fails if anything in this process, or in a CLI subprocess, touches the network."""
    log = tmp_path / "network.log"
    (tmp_path / "nonet").mkdir()
    (tmp_path / "nonet" / "sitecustomize.py").write_text(NO_NETWORK)
    monkeypatch.setenv("GP_NETWORK_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "nonet"), prepend=os.pathsep)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network use in a test that must stay offline")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield
    assert attempts == [] and not log.exists(), (attempts, log.read_text() if log.exists() else "")
