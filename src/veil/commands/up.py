"""`veil up`: a whole local Veil network under one data directory.

What runs (each service its own process with a log file under `logs/`; a service that exits
is restarted by `veil.commands.supervise`, and Ctrl-C stops them all, gateway first, chain
last; they die with `veil up` even when it is killed):

* the devnet chain (anvil) with Veil's contracts; its state is kept in `chain/state.json`, so a
  second `veil up` finds the same deployment, stakes, deposits and redeemed tickets;
* two nodes, `node-a` and `node-b`, each with its own identity, OHTTP keys and ticket queue;
  each registers and stakes itself on-chain at start and is paid with tickets. With `mpc`
  (`veil up --mpc`) a third, `node-c`, and each of the three also hosts an MPC party
  (`--mpc-link` on its own loopback port) and says so in its signed descriptor, so the
  gateway serves `<model>:mpc`. Each node loads the model: three need about 3.5 GB of memory;
* the packaged model's release, published once to the ReleaseLog by governance;
* a relay whose node list is the on-chain registry;
* the client gateway (OpenAI-compatible, on localhost) paying from the user's wallet.

Devnet accounts (anvil's public test mnemonic, never for real funds): 0 deploys and governs,
1 and 2 operate node-a and node-b, 3 is the user's pseudonymous wallet, 4 operates node-c.

The data directory holds keys, receipts and logs: it is made private to the user (directories
0700, files 0600, also those of an older run), and what `veil up` and its services create
there is private from the start (umask 077).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from veil.chain.deployment import TOKEN as VEIL  # base units per VEIL
from veil.commands.supervise import (
    ChainService,
    NetworkFailed,
    RestartPolicy,
    Service,
    Supervisor,
    raise_in_main_thread,
)
from veil.home import INFO_FILE, default_data_dir, make_private, private_umask

__all__ = [
    "MPC_NODE_NAMES",
    "NODE_NAMES",
    "LocalNetwork",
    "NetworkConfig",
    "Service",
    "pick_port",
    "up",
]

NODE_NAMES = ("node-a", "node-b")
MPC_NODE_NAMES = ("node-a", "node-b", "node-c")  # `veil up --mpc`: three parties
# devnet account index per node (3 is the wallet: kept so, so state from older runs still fits)
_NODE_ACCOUNT = {"node-a": 1, "node-b": 2, "node-c": 4}


def pick_port(preferred: int) -> int:
    """`preferred` if it is free on loopback, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


@dataclass(frozen=True)
class NetworkConfig:
    """Knobs of a local network (the defaults suit a demo; tests raise the win probability)."""

    chain_port: int = 8545
    node_ports: tuple[int, ...] = (8701, 8702, 8703)  # preferred, one per node
    mpc: bool = False  # three nodes, each also an MPC party (the gateway serves <model>:mpc)
    mpc_link_ports: tuple[int, ...] = (7101, 7102, 7103)  # preferred SPU link ports
    relay_port: int = 8780
    gateway_port: int = 8787
    stake: int = 100 * VEIL  # per node
    face_value: int = VEIL  # per winning ticket
    win_prob: float = 0.1  # so a request costs 0.1 VEIL on average
    withdraw_interval_s: float = 60.0  # nodes move redeemed earnings to their balance
    deposit: int = 500 * VEIL  # the wallet's broker deposit, topped up to this at start
    reserve: int = 100 * VEIL
    mint: int = 10_000 * VEIL  # minted to each devnet account at deployment
    # All of one user's traffic reaches the relay from the gateway's address: a per-client
    # limit fit for a single user's gateway, not the relay's public default.
    relay_rate: float = 50.0
    relay_burst: int = 100
    # The longest wait for a node's next answer piece at the relay. One MPC party request (a
    # 32-token prefill chunk of the real model) takes minutes when three parties share 2 cores.
    relay_read_timeout_s: float = 120.0
    mpc_relay_read_timeout_s: float = 900.0  # used instead with `mpc`
    model_timeout_s: float = 900.0  # the nodes load the model side by side on 2 cores
    # CPU threads per node: the machine's cores shared out, so two busy nodes do not thrash
    # (on 2 cores, two nodes with 2 threads each decode at a third of the speed).
    node_threads: int = field(default_factory=lambda: max(1, (os.cpu_count() or 2) // 2))
    engine: str = "ctranslate2"  # the nodes' inference backend (builtin: the fp32 reference)


class LocalNetwork:
    """The chain, two nodes (three MPC party nodes with `mpc`), a relay and the gateway on
    loopback, with state under `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        settings: NetworkConfig | None = None,
        *,
        relay_proxy: Callable[[str], str] | None = None,
    ) -> None:
        """`relay_proxy` maps the relay's URL to the one the gateway is given (tests put a
        recording proxy there to see exactly what the relay sees)."""
        self.data_dir = Path(data_dir)
        self.settings = settings or NetworkConfig()
        self.relay_proxy = relay_proxy
        self.devnet: Any = None
        self.deployment_path = self.data_dir / "chain" / "deployment.json"
        self.wallet_path = self.data_dir / "wallet" / "wallet.json"
        self.nodes: dict[str, Service] = {}
        self.node_urls: dict[str, str] = {}
        self.node_addresses: dict[str, str] = {}
        self.node_links: dict[str, str] = {}  # node name -> its MPC party's link address
        self.node_names = MPC_NODE_NAMES if self.settings.mpc else NODE_NAMES
        self.relay: Service | None = None
        self.gateway: Service | None = None
        self.relay_url = ""
        self.gateway_url = ""
        self.supervisor: Supervisor | None = None

    # ------------------------------------------------------------------ start

    def start(self, console: Console) -> None:
        """Start every service, in order, each once it can (see `supervise` for what follows).
        The data directory is made private first; the process umask is 077 meanwhile."""
        make_private(self.data_dir)
        with private_umask():
            with console.status("starting the devnet chain..."):
                chain = self._start_chain(console)
            self._prepare_accounts(chain, console)
            self._prepare_engine(console)
            self._start_nodes(console)
            self._start_relay(console)
            self._start_gateway(console)
            self._write_info()

    def _start_chain(self, console: Console) -> Any:
        from veil.chain import ChainClient, Deployment, Devnet, deploy
        from veil.chain.errors import ChainError

        s = self.settings
        self.devnet = Devnet(
            port=pick_port(s.chain_port),
            state_path=self.data_dir / "chain" / "state.json",
            log_path=self.data_dir / "logs" / "chain.log",
            die_with_parent=True,
        ).start()
        accounts = self.devnet.accounts
        deployment = None
        if self.deployment_path.exists():
            with contextlib.suppress(ChainError):
                old = Deployment.load(self.deployment_path)
                moved = dataclasses.replace(old, rpc_url=self.devnet.rpc_url)
                client = ChainClient(moved)
                broker = client.w3.to_checksum_address(moved.addresses["TicketBroker"])
                if client.w3.eth.get_code(broker):
                    deployment = moved
        if deployment is None:
            deployment = deploy(
                self.devnet.rpc_url,
                accounts[0].private_key,
                mint={a.address: s.mint for a in accounts[1:]},
            )
            what = "deployed Veil's contracts"
        else:
            what = "found Veil's contracts from the last run"
        deployment.save(self.deployment_path)
        console.print(f"[green]✓[/] chain at {self.devnet.rpc_url}: {what}")
        return ChainClient(deployment, accounts[0].private_key)

    def _prepare_accounts(self, governance: Any, console: Console) -> None:
        """Node identities and the wallet from devnet accounts; release; wallet deposit."""
        from eth_account import Account

        from veil.chain import ChainClient
        from veil.engine.model import locate_model, weights_digest
        from veil.identity import NodeIdentity
        from veil.identity.keystore import load_keystore, save_keystore
        from veil.node.descriptor import software_claim

        accounts = self.devnet.accounts
        for name in self.node_names:
            path = self.data_dir / name / "identity.json"
            if not path.exists():
                key = accounts[_NODE_ACCOUNT[name]].private_key
                NodeIdentity(Account.from_key(key)).save(path)
            self.node_addresses[name] = NodeIdentity.load(path).address
        if not self.wallet_path.exists():
            save_keystore(Account.from_key(accounts[3].private_key), self.wallet_path)

        model_hash = bytes.fromhex(weights_digest(locate_model(None)))
        measurement = software_claim()
        if not governance.is_release_approved(model_hash, measurement):
            governance.publish_release(model_hash, measurement, "packaged SmolLM2-135M-Instruct")
            console.print(
                f"[green]✓[/] release published: model sha256:{model_hash.hex()[:16]}... "
                f"on software {measurement.hex()[:16]}..."
            )
        else:
            console.print("[green]✓[/] release already approved in the ReleaseLog")

        wallet = ChainClient(governance.deployment, load_keystore(self.wallet_path).key)
        funds = wallet.sender_funds()
        s = self.settings
        if funds.deposit < s.deposit:
            wallet.fund_deposit(s.deposit - funds.deposit)
        if funds.reserve < s.reserve:
            wallet.fund_reserve(s.reserve - funds.reserve)
        funds = wallet.sender_funds()
        console.print(
            f"[green]✓[/] wallet {wallet.address}: deposit {funds.deposit / VEIL:g} VEIL, "
            f"reserve {funds.reserve / VEIL:g} VEIL"
        )

    def _prepare_engine(self, console: Console) -> None:
        """Convert the model for ctranslate2 once, here, rather than in each node at once."""
        if self.settings.engine != "ctranslate2":
            return
        from veil.engine.convert import converted_model
        from veil.engine.model import locate_model, weights_digest

        files = locate_model(None)
        with console.status("preparing the model for the ctranslate2 engine...") as status:
            folder = converted_model(
                files, weights_digest(files), progress=lambda message: status.update(message)
            )
        console.print(f"[green]✓[/] model ready for ctranslate2 ({folder.name[:16]}...)")

    def _start_nodes(self, console: Console) -> None:
        s = self.settings
        logs = self.data_dir / "logs"
        for i, name in enumerate(self.node_names):
            port = pick_port(s.node_ports[i] if i < len(s.node_ports) else 0)
            url = f"http://127.0.0.1:{port}"
            node_dir = self.data_dir / name
            self.node_urls[name] = url
            self.nodes[name] = Service(
                name,
                [
                    "node",
                    "serve",
                    "--port",
                    str(port),
                    "--endpoint",
                    url,
                    "--keys",
                    str(node_dir / "ohttp-keys.json"),
                    "--identity",
                    str(node_dir / "identity.json"),
                    "--chain",
                    str(self.deployment_path),
                    "--stake",
                    str(s.stake),
                    "--face-value",
                    str(s.face_value),
                    "--win-prob",
                    str(s.win_prob),
                    "--threads",
                    str(s.node_threads),
                    "--engine",
                    s.engine,
                    "--tickets",
                    str(node_dir / "tickets.jsonl"),
                    "--withdraw-interval",
                    str(s.withdraw_interval_s),
                    *self._party_args(i, name),
                ],
                logs / f"{name}.log",
                health_url=f"{url}/healthz",
            )
        for service in self.nodes.values():
            service.start()
        started = time.monotonic()
        pending = dict(self.nodes)
        with console.status("") as status:
            while pending:
                waited = time.monotonic() - started
                status.update(
                    f"loading the model in {', '.join(pending)} and registering on-chain "
                    + (
                        f"({waited:.0f} s; about 30-60 s on 2 cores)..."
                        if not s.mpc
                        else f"and preparing their MPC parties ({waited:.0f} s; a few minutes "
                        "on 2 cores)..."
                    )
                )
                if waited > s.model_timeout_s:
                    raise RuntimeError(f"{', '.join(pending)} did not start in time")
                for name, service in list(pending.items()):
                    if service.ready(self.node_urls[name] + "/healthz"):
                        del pending[name]
                        party = (
                            f", MPC party (aby3) with its SPU link on {self.node_links[name]}"
                            if name in self.node_links
                            else ""
                        )
                        console.print(
                            f"[green]✓[/] {name} {self.node_addresses[name]} serving at "
                            f"{self.node_urls[name]}, staked and registered{party} "
                            f"(log: {service.log_path})"
                        )
                time.sleep(0.3)

    def _party_args(self, index: int, name: str) -> list[str]:
        """`--mpc-link` for a node that hosts an MPC party (all of them with `mpc`)."""
        if not self.settings.mpc:
            return []
        ports = self.settings.mpc_link_ports
        link = f"127.0.0.1:{pick_port(ports[index] if index < len(ports) else 0)}"
        self.node_links[name] = link
        return ["--mpc-link", link]

    def _start_relay(self, console: Console) -> None:
        port = pick_port(self.settings.relay_port)
        self.relay_url = f"http://127.0.0.1:{port}"
        first = next(iter(self.node_addresses.values()))
        ready_url = f"{self.relay_url}/relay/{first}/descriptor"
        self.relay = Service(
            "relay",
            [
                "relay",
                "serve",
                "--chain",
                str(self.deployment_path),
                "--port",
                str(port),
                "--allow-private-endpoints",  # the nodes listen on 127.0.0.1
                "--rate",
                str(self.settings.relay_rate),
                "--burst",
                str(self.settings.relay_burst),
                "--read-timeout",
                str(
                    self.settings.mpc_relay_read_timeout_s
                    if self.settings.mpc
                    else self.settings.relay_read_timeout_s
                ),
            ],
            self.data_dir / "logs" / "relay.log",
            health_url=ready_url,
        )
        with console.status("starting the relay..."):
            self.relay.start()
            self.relay.wait_ready(ready_url, timeout=60)
        console.print(
            f"[green]✓[/] relay at {self.relay_url}, nodes from the on-chain registry "
            f"(log: {self.relay.log_path})"
        )

    def _start_gateway(self, console: Console) -> None:
        port = pick_port(self.settings.gateway_port)
        self.gateway_url = f"http://127.0.0.1:{port}"
        self.gateway = Service(
            "gateway",
            [
                "gateway",
                "--relay",
                self.relay_proxy(self.relay_url) if self.relay_proxy else self.relay_url,
                "--chain",
                str(self.deployment_path),
                "--wallet",
                str(self.wallet_path),
                "--port",
                str(port),
                "--receipts",
                str(self.data_dir / "receipts.sqlite"),
                "--history",
                str(self.data_dir / "chat-history.sqlite"),
            ],
            self.data_dir / "logs" / "gateway.log",
            health_url=f"{self.gateway_url}/v1/models",
        )
        with console.status("starting the gateway and verifying the nodes..."):
            self.gateway.start()
            self.gateway.wait_ready(f"{self.gateway_url}/v1/models", timeout=60)
            self._wait_for_a_verified_node(timeout=60)
        console.print(
            f"[green]✓[/] gateway (OpenAI-compatible) at {self.gateway_url}/v1 "
            f"(log: {self.gateway.log_path})"
        )

    def _wait_for_a_verified_node(self, timeout: float) -> None:
        """Until the gateway lists a model: its listing answers within a short deadline even
        before any node is verified, so "ready" means a node passed its checks."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                listed = httpx.get(f"{self.gateway_url}/v1/models", timeout=5).json()
                if isinstance(listed, dict) and listed.get("data"):
                    return
            time.sleep(0.5)
        raise RuntimeError(
            f"the gateway verified no node in {timeout:.0f} s (log: logs/gateway.log)"
        )

    def _write_info(self) -> None:
        info = {
            "gateway_url": self.gateway_url,
            "relay_url": self.relay_url,
            "rpc_url": self.devnet.rpc_url,
            "deployment": str(self.deployment_path),
            "wallet": str(self.wallet_path),
            "nodes": {
                name: {
                    "address": self.node_addresses[name],
                    "url": self.node_urls[name],
                    "mpc_link": self.node_links.get(name),
                }
                for name in self.node_names
            },
            "pid": os.getpid(),
        }
        (self.data_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")

    # ------------------------------------------------------------------ run / stop

    def services(self) -> list[Service]:
        """The Veil services, in stopping order (gateway first)."""
        return [s for s in (self.gateway, self.relay, *self.nodes.values()) if s is not None]

    def supervise(
        self,
        report: Callable[[str], None],
        on_give_up: Callable[[str], None],
        policy: RestartPolicy | None = None,
    ) -> Supervisor:
        """Restart the services that exit from now on (the chain too), from a supervisor
        thread; `stop` ends it. Call once `start` has returned."""
        chain = ChainService(self.devnet, self.data_dir / "logs" / "chain.log")
        self.supervisor = Supervisor(
            [chain, *self.nodes.values(), *(s for s in (self.relay, self.gateway) if s)],
            report=report,
            on_give_up=on_give_up,
            policy=policy,
        ).start()
        return self.supervisor

    def stop(self) -> None:
        """Stop everything, gateway first, chain last (restarts held meanwhile)."""
        if self.supervisor is not None:
            self.supervisor.hold()
        for service in self.services():
            service.stop()
        if self.devnet is not None:
            self.devnet.stop()  # anvil writes its state file on exit
            self.devnet = None
        if self.supervisor is not None:
            self.supervisor.close()
            self.supervisor = None
        with contextlib.suppress(OSError):
            (self.data_dir / INFO_FILE).unlink()


def up(
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="State directory (default $VEIL_HOME or ./.veil); reused."
    ),
    prompt: str = typer.Option(
        "In two sentences, why does privacy matter when using AI?",
        "--prompt",
        "-p",
        help="First message sent through the gateway once the network is up ('' for none).",
    ),
    interactive: bool | None = typer.Option(
        None,
        "--interactive/--no-interactive",
        help="Chat in this terminal after the first answer (default: when it is a terminal).",
    ),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Keep the network up until Ctrl-C (--no-wait: stop)."
    ),
    max_tokens: int = typer.Option(96, help="Longest answer, in tokens."),
    mpc: bool = typer.Option(
        False,
        "--mpc/--no-mpc",
        help="Three nodes instead of two, each also an MPC party, so the gateway serves "
        "<model>:mpc (`veil chat --mode mpc`). Each node loads the model (~1.2 GB each).",
    ),
) -> None:
    """Start a local Veil network and chat through it; Ctrl-C stops everything.

    The devnet chain with Veil's contracts, two nodes that stake and register themselves
    (three MPC party nodes with --mpc), the relay (nodes from the on-chain registry) and the
    OpenAI-compatible gateway.
    """
    import openai

    from veil.commands.chat import DEFAULT_MODEL, gateway_openai, gateway_reply, run_gateway_repl

    def _stop_on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop_on_term)
    os.umask(0o077)  # what veil up and its services write (keys, receipts, logs) is private
    console = Console()
    # MPC party nodes compute the fp32 model anyway: they serve with it too (builtin)
    settings = NetworkConfig(mpc=mpc, engine="builtin" if mpc else "ctranslate2")
    net = LocalNetwork(data_dir or default_data_dir(), settings)
    if interactive is None:
        interactive = sys.stdin.isatty()
    failed = False
    try:
        net.start(console)
        net.supervise(console.print, raise_in_main_thread())
        console.print(
            f"\n[bold]Veil is up.[/] State in {net.data_dir}/ (a second `veil up` reuses it).\n"
            f"  open this: {net.gateway_url}/  (private chat in your browser; explorer at "
            f"{net.gateway_url}/explorer)\n"
            f"  OpenAI-compatible API: {net.gateway_url}/v1  (any api key)\n"
            f'    e.g. OpenAI(base_url="{net.gateway_url}/v1", api_key="veil")\n'
            f"  chat:   veil chat          status: veil status\n"
            f"  models: {DEFAULT_MODEL} (anonymous mode), "
            f"{DEFAULT_MODEL}:tee is refused here (nodes have dev evidence only)"
            + (
                f",\n          {DEFAULT_MODEL}:mpc on the MPC parties of "
                f"{', '.join(net.node_links)} (`veil chat --mode mpc`; about 75 s for the "
                "prompt, then about 10 s per token on 2 cores; not paid)"
                if net.node_links
                else ""
            )
        )
        client = gateway_openai(net.gateway_url)
        params = {"max_tokens": max_tokens, "temperature": 0.7}
        history: list[dict[str, str]] = []
        if prompt:
            history.append({"role": "user", "content": prompt})
            console.print(
                f"\n[bold]you>[/] {prompt}\n[dim](paid with a ticket, sealed with OHTTP to "
                f"the chosen node, sent through the relay)[/]"
            )
            sys.stdout.write("assistant> ")
            answer = gateway_reply(client, DEFAULT_MODEL, history, sys.stdout, **params)
            history.append({"role": "assistant", "content": answer})
        if interactive:
            run_gateway_repl(client, DEFAULT_MODEL, history, params)
        if wait:
            console.print(
                "\nThe network is running (a service that exits is restarted); Ctrl-C stops it."
            )
            while True:
                time.sleep(1)
    except KeyboardInterrupt:
        console.print("\ninterrupted")
    except NetworkFailed:
        failed = True  # the supervisor has said why
    except (RuntimeError, openai.APIError) as exc:
        console.print(f"[red]error:[/] {exc}")
        failed = True
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a late give-up must not cut the stop
        with console.status("stopping the network..."):
            net.stop()
        console.print("stopped.")
    if failed:
        raise typer.Exit(1)
