"""``lowlux keys``: key pairs with private secrets, authorization, and what a remote client may see."""

from __future__ import annotations

import os
import socket
import stat

import pytest
import zmq.auth

from lowlux.cli import main
from lowlux.client import Client, WorkerError
from lowlux.keys import authorize, generate, load_client_keys, read_key_file
from workerkit import endpoint, engine, free_port, runtime, serving  # noqa: F401


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_keys_cli_makes_private_pairs_and_authorizes_clients(tmp_path, capsys):
    server_dir, client_dir = tmp_path / "srv", tmp_path / "cli"
    assert main(["keys", "--dir", str(server_dir), "server"]) == 0
    assert main(["keys", "--dir", str(client_dir), "client", "laptop"]) == 0
    assert mode(server_dir) == 0o700 and mode(server_dir / "server.key_secret") == 0o600
    assert mode(client_dir / "laptop.key_secret") == 0o600
    public, secret = zmq.auth.load_certificate(str(server_dir / "server.key_secret"))
    assert len(public) == 40 and len(secret) == 40
    assert zmq.auth.load_certificate(str(server_dir / "server.key")) == (public, None)
    assert main(["keys", "--dir", str(server_dir), "authorize", str(client_dir / "laptop.key")]) == 0
    assert (server_dir / "authorized" / "laptop.key").exists()
    assert main(["keys", "--dir", str(server_dir), "server"]) == 2  # never silently replaced
    assert main(["keys", "--dir", str(server_dir), "authorize", str(client_dir / "laptop.key_secret")]) == 2
    assert main(["keys", "--dir", str(server_dir), "list"]) == 0
    out = capsys.readouterr()
    assert "already exists" in out.err and "secret key" in out.err
    assert "laptop.key" in out.out and public.decode() in out.out


def test_client_keys_come_from_env_or_config(tmp_path, monkeypatch):
    monkeypatch.delenv("LOWLUX_SERVER_KEY", raising=False)
    monkeypatch.delenv("LOWLUX_CLIENT_KEY", raising=False)
    server_public, _ = generate(tmp_path, "server")
    _, client_secret = generate(tmp_path, "client")
    assert load_client_keys(None, None, {}) is None  # no server key: a local worker
    config = {"client": {"server_key": str(server_public), "client_key": str(client_secret)}}
    keys = load_client_keys(None, None, config)
    assert keys.server_public == zmq.auth.load_certificate(str(server_public))[0]
    monkeypatch.setenv("LOWLUX_SERVER_KEY", str(tmp_path / "missing.key"))
    with pytest.raises(Exception, match="missing.key"):
        load_client_keys(None, None, config)


def test_remote_clients_only_see_their_own_jobs(engine, endpoint, tmp_path, make_dng):
    server_dir = tmp_path / "srv"
    generate(server_dir, "server")
    pairs = {}
    for name in ("alice", "bob"):
        public, secret = generate(tmp_path / name, name)
        authorize(server_dir, public)
        pairs[name] = load_client_keys(server_dir / "server.key", secret, {})
    listen = f"tcp://127.0.0.1:{free_port()}"
    with serving(engine, endpoint, listen=listen, keys_dir=server_dir):
        with Client(listen, keys=pairs["alice"]) as alice, Client(listen, keys=pairs["bob"]) as bob:
            job = alice.submit([make_dng("mine.dng")])
            with pytest.raises(WorkerError, match="no job"):
                bob.status(job)
            with pytest.raises(WorkerError, match="no job"):
                bob.cancel(job)
            assert bob.jobs() == [] and [j["job"] for j in alice.jobs()] == [job]
            assert alice.wait(job)[0]["state"] == "done"


def test_authorizing_a_key_never_replaces_another_of_the_same_name(tmp_path, capsys):
    server_dir = tmp_path / "srv"
    assert main(["keys", "--dir", str(server_dir), "server"]) == 0
    (k1, _), (k2, _) = generate(tmp_path / "k1", "client"), generate(tmp_path / "k2", "client")
    authorize_cli = ["keys", "--dir", str(server_dir), "authorize"]
    assert main([*authorize_cli, str(k1)]) == 0
    assert main([*authorize_cli, str(k1)]) == 0  # the same key again changes nothing
    capsys.readouterr()
    assert main([*authorize_cli, str(k2)]) == 2
    err = capsys.readouterr().err
    assert "client.key" in err and "another key" in err and "--name" in err
    assert main([*authorize_cli, "--name", "laptop2", str(k2)]) == 0
    authorized = {p.name: read_key_file(p)[0] for p in (server_dir / "authorized").glob("*.key")}
    assert authorized == {"client.key": read_key_file(k1)[0], "laptop2.key": read_key_file(k2)[0]}
    assert main([*authorize_cli, "--name", "../evil", str(k2)]) == 2


def test_client_keys_are_named_after_the_machine_and_found_by_default(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "Night Owl.example.org")
    monkeypatch.delenv("LOWLUX_CLIENT_KEY", raising=False)
    folder = tmp_path / "keys"
    assert main(["keys", "--dir", str(folder), "client"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["client-Night-Owl.key", "client-Night-Owl.key_secret"]
    server_public, _ = generate(tmp_path, "server")
    keys = load_client_keys(server_public, None, {"keys": {"dir": str(folder)}})
    assert keys.client_public == read_key_file(folder / "client-Night-Owl.key")[0]
