"""`chef`: run a chef process that joins a federation."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from artefacts.childwatch import use_pidfd_child_watcher
from artefacts.keys import check_public_key_line
from artefacts.natsutil import JETSTREAM_READY_S, JetStreamUnavailable, NatsUnreachable, local_address_towards
from chefs.runtime import Chef, ChefConfig
from protocol import subjects
from protocol.kinds import KNOWN_KINDS


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="chef", description="Run a ComputePods chef: cook steps for a federation.")
    p.add_argument("--nats", required=True, help="NATS server URL, e.g. nats://127.0.0.1:4222")
    p.add_argument("--kind", action="append", choices=KNOWN_KINDS, required=True, help="a kind to cook (repeat)")
    p.add_argument("--id", default=None, help="chef id (default: <hostname>-<pid>)")
    p.add_argument("--home", type=Path, default=None,
                   help="chef state dir (default ~/.local/state/computepods/chef-<id>)")
    p.add_argument("--store", type=Path, default=None, help="content store dir (default <home>/store)")
    p.add_argument("--sftp-listen", type=_hostport, default=("127.0.0.1", 0), help="HOST:PORT for the SFTP server")
    p.add_argument("--advertise", default="", help="address peers use to reach the SFTP server")
    p.add_argument("--federation", default=subjects.DEFAULT_FEDERATION, help="subject prefix of the federation")
    p.add_argument("--slots", type=int, default=os.cpu_count() or 1, help="steps run at once")
    p.add_argument("--key", type=Path, default=None, help="federation private key used to pull from peers")
    p.add_argument("--authorized-keys", type=Path, default=None, help="file of public keys allowed to pull from us")
    p.add_argument("--tool", action="append", default=[], help="extra tool to advertise (repeat)")
    p.add_argument("--no-sandbox", action="store_true", help="run steps without bwrap even if it exists")
    p.add_argument("--store-max-bytes", type=int, default=0, metavar="BYTES",
                   help="evict least recently used artefacts above this store size (default: keep all)")
    p.add_argument("--no-hand-over", action="store_true",
                   help="on SIGTERM, do not pass artefacts only this chef holds to a peer")
    p.add_argument("--metrics-listen", type=_hostport, default=None, metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics")
    p.add_argument("--heartbeat", type=float, default=2.0, metavar="SECONDS",
                   help="how often to renew the lease (keep well under the MajorDomos' --lease)")
    p.add_argument("--jetstream-wait", type=float, default=JETSTREAM_READY_S, metavar="SECONDS",
                   help="at start, how long to wait for JetStream to answer (a cluster still forming)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> ChefConfig:
    chef_id = subjects.check_token(args.id or f"{socket.gethostname()}-{os.getpid()}", "chef id")
    home = args.home or Path.home() / ".local/state/computepods" / f"chef-{chef_id}"
    authorized: list[str] = []
    if args.authorized_keys:
        for number, line in enumerate(args.authorized_keys.read_text().splitlines(), 1):
            if line.strip() and not line.startswith("#"):
                check_public_key_line(line.strip(), f"{args.authorized_keys}, line {number}")
                authorized.append(line.strip())
    sftp_listen, advertise = args.sftp_listen, args.advertise
    if sftp_listen[0] == "127.0.0.1" and not advertise:
        # Peers elsewhere cannot reach our loopback: serve on the address that routes to NATS.
        towards = local_address_towards(args.nats)
        if towards:
            sftp_listen, advertise = (towards, sftp_listen[1]), towards
    return ChefConfig(
        id=chef_id, nats_url=args.nats, kinds=list(dict.fromkeys(args.kind)), home=home,
        store=args.store, federation=args.federation, sftp_listen=sftp_listen,
        advertise_host=advertise, slots=max(1, args.slots), client_key=args.key,
        authorized_keys=authorized, extra_tools=args.tool, sandbox=not args.no_sandbox,
        heartbeat_s=max(0.1, args.heartbeat), metrics_listen=args.metrics_listen,
        store_max_bytes=max(0, args.store_max_bytes), hand_over=not args.no_hand_over,
        jetstream_wait_s=max(0.0, args.jetstream_wait),
    )


async def _serve(config: ChefConfig) -> None:
    chef = Chef(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, chef.request_stop)
    try:
        await chef.start()
        _say_ready(config.id)
        await chef.run_until_stopped()
    finally:
        await chef.stop()


def _say_ready(chef_id: str) -> None:
    """`chef ID ready` on stdout, which the embedded federation waits for: in one write, since the
    chefs of a fleet (chefs/fleet.py) share the pipe, and `print` may write a line in two."""
    sys.stdout.flush()
    with contextlib.suppress(OSError):  # nobody reads it (a chef started by hand, its stdout closed)
        os.write(sys.stdout.fileno(), f"chef {chef_id} ready\n".encode())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"chef: {exc}", file=sys.stderr)
        return 2
    use_pidfd_child_watcher()
    try:
        asyncio.run(_serve(config))
    except (NatsUnreachable, JetStreamUnavailable) as exc:
        print(f"chef: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
