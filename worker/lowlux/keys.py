"""``lowlux keys``: CURVE key pairs for the remote worker (``lowlux serve --listen``).

Layout of a keys folder (default ``~/.config/lowlux/keys``, mode 0700)::

    server.key           the worker's public key; copy it to every client machine
    server.key_secret    the worker's secret key (mode 0600); never leaves the worker
    client-HOST.key(_secret)  a client's pair (made on the client machine, named after it)
    authorized/          public keys of the clients the worker accepts; anyone else is refused

Files use ZeroMQ's certificate format, so ``zmq.auth.load_certificate`` and ZeroMQ's own tools read them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from .atomic import replacing
from .config import ENV_CLIENT_KEY, ENV_SERVER_KEY, ConfigError, keys_dir, private_dir, setting
from .options import EXIT_OK, EXIT_USAGE

SERVER = "server"
AUTHORIZED = "authorized"


@dataclass(frozen=True)
class CurveKeys:
    """What a client needs to talk to a remote worker."""

    server_public: bytes
    client_public: bytes
    client_secret: bytes


def _certificate(public: bytes, secret: bytes | None) -> str:
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    lines = [f"#   ****  Generated {stamp} by lowlux keys  ****",
             "#   ZeroMQ CURVE " + ("**Secret** Certificate" if secret else "Public Certificate"),
             "#   " + ("DO NOT GIVE THIS FILE TO ANYONE." if secret else "Give this file to the other side."),
             "", "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, mode: int, force: bool) -> None:
    if path.exists() and not force:
        raise ConfigError(f"{path}: already exists (use --force to replace the key pair)")
    with replacing(path, mode=mode) as tmp:
        tmp.write_text(text)


def generate(folder: Path, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """A new key pair ``NAME.key`` (public) and ``NAME.key_secret`` (0600) in ``folder`` (0700)."""
    import zmq

    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"bad key name {name!r}")
    private_dir(folder)
    public, secret = zmq.curve_keypair()
    public_path, secret_path = folder / f"{name}.key", folder / f"{name}.key_secret"
    _write(secret_path, _certificate(public, secret), 0o600, force)
    _write(public_path, _certificate(public, None), 0o644, force)
    return public_path, secret_path


def read_key_file(path: Path) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a certificate; errors name the file."""
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable CURVE key file ({exc})") from None
    if not public or len(public) != 40:
        raise ConfigError(f"{path}: has no valid public key")
    return public, secret


def default_client_name() -> str:
    """``client-<host>``: a client's key pair is named after its machine, so the keys of two machines
    do not meet under one name in the worker's authorized/ folder."""
    host = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname().split(".")[0]).strip("-")
    return f"client-{host}" if host else "client"


def _check_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith(".") or name.endswith("_secret"):
        raise ConfigError(f"bad key name {name!r}: a plain name such as laptop")
    return name


def authorize(folder: Path, public_file: Path, name: str | None = None, *, force: bool = False) -> Path:
    """Let the client whose public key is in ``public_file`` connect (the worker reloads on SIGHUP).

    The key is stored as ``authorized/NAME.key`` (NAME: ``name``, else the file's own name). A different
    key already stored under that name is never replaced silently (that would lock its client out):
    ``force`` replaces it, or another ``name`` keeps both.
    """
    if public_file.name.endswith("_secret"):
        raise ConfigError(f"{public_file}: that is a secret key; authorize the public one (.key)")
    public, _ = read_key_file(public_file)
    name = _check_name(name.removesuffix(".key") if name else public_file.name.removesuffix(".key"))
    target_dir = private_dir(folder / AUTHORIZED)
    target = target_dir / f"{name}.key"
    if target.exists() and not force:
        try:
            held = read_key_file(target)[0]
        except ConfigError:
            held = None
        if held == public:
            return target  # that very key is authorized already
        raise ConfigError(f"{target} holds another key ({held.decode() if held else 'unreadable'}); "
                          f"authorize this one under another name (lowlux keys authorize --name NAME "
                          f"{public_file}), or replace that one with --force")
    for other in target_dir.glob("*.key"):
        if other != target and read_key_file(other)[0] == public:
            print(f"note: this key is also authorized as {other.name}", file=sys.stderr)
    with replacing(target, mode=0o644) as tmp:
        shutil.copyfile(public_file, tmp)
    return target


def load_server_keys(folder: Path | None) -> tuple[bytes, bytes, Path]:
    """The worker's (public, secret) and its authorized/ folder, or an error saying how to make them."""
    folder = folder or keys_dir()
    secret_path = folder / f"{SERVER}.key_secret"
    if not secret_path.exists():
        raise ConfigError(f"--listen needs CURVE keys and {secret_path} does not exist: run `lowlux keys server"
                          f"{'' if folder == keys_dir() else f' --dir {folder}'}` first")
    public, secret = read_key_file(secret_path)
    if not secret:
        raise ConfigError(f"{secret_path}: holds no secret key")
    authorized = folder / AUTHORIZED
    if not authorized.is_dir() or not any(authorized.glob("*.key")):
        raise ConfigError(f"no authorized client keys in {authorized}: run `lowlux keys authorize CLIENT.key` "
                          "for each client machine")
    return public, secret, authorized


def load_client_keys(server_key: str | Path | None, client_key: str | Path | None,
                     config: dict | None = None) -> CurveKeys | None:
    """CURVE keys for a remote worker from flags, env vars or the config file; None for a local worker."""
    server_key = server_key or os.environ.get(ENV_SERVER_KEY) or setting("client", "server_key", config)
    if not server_key:
        return None
    client_key = (client_key or os.environ.get(ENV_CLIENT_KEY) or setting("client", "client_key", config)
                  or default_client_key(keys_dir(config=config)))
    server_public, _ = read_key_file(Path(server_key).expanduser())
    client_public, client_secret = read_key_file(Path(client_key).expanduser())
    if not client_secret:
        raise ConfigError(f"{client_key}: holds no secret key (use the .key_secret file made by `lowlux keys client`)")
    return CurveKeys(server_public, client_public, client_secret)


def default_client_key(folder: Path) -> Path:
    """This machine's secret key as ``lowlux keys client`` names it, or the older ``client.key_secret``."""
    named = folder / f"{default_client_name()}.key_secret"
    return named if named.exists() or not (folder / "client.key_secret").exists() else folder / "client.key_secret"


# ---- the command ---------------------------------------------------------------------------------------------


def add_keys_parser(sub) -> None:
    p = sub.add_parser("keys", help="CURVE keys for a remote worker (serve --listen)",
                       description="Make and authorize the CURVE keys a remote worker and its clients use.")
    p.add_argument("--dir", type=Path, help="keys folder (default: ~/.config/lowlux/keys)")
    ks = p.add_subparsers(dest="keys_command", metavar="ACTION")
    s = ks.add_parser("server", help="make the worker's key pair (server.key, server.key_secret)")
    s.add_argument("--force", action="store_true", help="replace an existing pair")
    c = ks.add_parser("client", help="make a client's key pair (on the client machine)")
    c.add_argument("name", nargs="?", help="key name (default: client-<this machine's name>)")
    c.add_argument("--force", action="store_true", help="replace an existing pair")
    a = ks.add_parser("authorize", help="accept a client's public key on this worker")
    a.add_argument("public_key", type=Path, metavar="CLIENT.key")
    a.add_argument("--name", help="store it as authorized/NAME.key (default: the file's name)")
    a.add_argument("--force", action="store_true", help="replace a different key stored under that name")
    ks.add_parser("list", help="show the keys and the authorized clients")
    p.set_defaults(func=cmd_keys)


def cmd_keys(args: argparse.Namespace) -> int:
    folder = keys_dir(args.dir)
    try:
        if args.keys_command == "server":
            public, secret = generate(folder, SERVER, force=args.force)
            private_dir(folder / AUTHORIZED)
            print(f"{secret}\n{public}\ncopy {public.name} to each client; authorize each client with "
                  f"`lowlux keys authorize CLIENT.key`")
        elif args.keys_command == "client":
            public, secret = generate(folder, args.name or default_client_name(), force=args.force)
            print(f"{secret}\n{public}\ncopy {public.name} to the worker and run `lowlux keys authorize "
                  f"{public.name}` there; put the worker's server.key here and pass --server-key")
        elif args.keys_command == "authorize":
            print(authorize(folder, args.public_key, args.name, force=args.force))
        else:
            _list(folder)
    except ConfigError as exc:
        print(f"lowlux keys: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _list(folder: Path) -> None:
    print(f"keys folder: {folder}")
    for path in sorted(folder.glob("*.key")):
        public, _ = read_key_file(path)
        has_secret = (folder / f"{path.name}_secret").exists()
        print(f"  {path.name:24} {public.decode()}{'  (+ secret)' if has_secret else ''}")
    authorized = sorted((folder / AUTHORIZED).glob("*.key"))
    print(f"authorized clients ({len(authorized)}):")
    for path in authorized:
        print(f"  {path.name:24} {read_key_file(path)[0].decode()}")
