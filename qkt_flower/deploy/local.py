"""A real Flower deployment on this machine: one ``flower-superlink`` and N ``flower-supernode`` processes.

The same ServerApp/ClientApp as the simulation run over Flower's deployment runtime. Transport: the
SuperLink serves its Fleet (SuperNodes), Control (``flwr`` CLI) and Runtime (ServerApp) APIs over HTTP —
HTTPS with TLS — on one port. ``secure=True`` (the default) makes a CA and a server certificate,
and with ``auth=True`` an EC key per SuperNode whose public key is registered with ``flwr supernode
register`` before the node starts (the SuperLink runs with ``--enable-supernode-auth``: an unregistered
node is refused). Every SuperNode gets its own ``FLWR_HOME``, its own ``--port`` and the node config
``partition-id=K data-root=...``.

Every process is started in a new session and stopped with its whole tree (:func:`stop_trees`), also when
the caller fails: use it as a context manager.

    with LocalDeployment(tmp, num_nodes=3) as d:
        d.run(["partition.num_clients=3"], out_dir)
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from qkt_flower.config import compose_config, to_config
from qkt_flower.deploy.credentials import NodeKey, TLSFiles, make_node_key, make_tls
from qkt_flower.deploy.ports import free_port, wait_for_port
from qkt_flower.fl.launch import PROJECT_DIR, flwr_bin, flwr_env, last_run_status
from qkt_flower.fl.processes import alive, stop_trees

CONNECTION = "deployment"  # the connection name in $FLWR_HOME/config.toml of the `flwr` CLI
HOST = "127.0.0.1"


@dataclass
class Daemon:
    """One started process and where its output goes."""

    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        """Process id (also its process group and session: it was started in a new session)."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.popen.poll() is None and alive(self.pid)

    def tail(self, lines: int = 30) -> str:
        """The last lines of its log (for error messages)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LocalDeployment:
    """SuperLink + SuperNodes as subprocesses of this one, under ``workdir`` (certificates, homes, logs).

    Parameters
    ----------
    workdir
        Folder for certificates, each process's ``FLWR_HOME`` and logs.
    num_nodes
        SuperNodes to start, with ``partition-id`` 0 … ``num_nodes - 1``.
    secure, auth
        TLS on the SuperLink's port; SuperNode authentication (needs TLS).
    data_root
        Passed to every node as ``data-root`` (the node's copy of the dataset); ``None`` = the config's.
    """

    workdir: Path
    num_nodes: int
    secure: bool = True
    auth: bool = True
    data_root: str | None = None
    start_timeout: float = 60.0
    port: int = 0  # 0 = a free one
    superlink: Daemon | None = field(default=None, init=False)
    nodes: dict[int, Daemon] = field(default_factory=dict, init=False)
    tls: TLSFiles | None = field(default=None, init=False)
    keys: dict[int, NodeKey] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.auth and not self.secure:
            raise ValueError("SuperNode authentication needs TLS: use secure=True with auth=True")
        self.workdir = Path(self.workdir).resolve()
        self.port = self.port or free_port(HOST)

    # -- lifecycle -----------------------------------------------------------------------------------
    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``host:port`` of the SuperLink (Fleet, Control and Runtime APIs share it)."""
        return f"{HOST}:{self.port}"

    @property
    def cli_home(self) -> Path:
        """``FLWR_HOME`` of the ``flwr`` CLI, whose ``config.toml`` names the connection ``deployment``."""
        return self.workdir / "flwr-cli"

    def start(self) -> None:
        """Credentials, the SuperLink, registered node keys, then every SuperNode (waits until all are online)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.secure:
            self.tls = make_tls(self.workdir / "certificates")
        self._write_cli_config()
        self.start_superlink()
        for k in range(self.num_nodes):
            self.start_node(k)
        self.wait_online(self.num_nodes)

    def stop(self) -> None:
        """Stop every SuperNode, then the SuperLink, each with all its children."""
        stop_trees([node.pid for node in self.nodes.values()])  # all nodes at once, one grace period
        if self.superlink is not None:
            stop_trees([self.superlink.pid])
        for daemon in [*self.nodes.values(), *([self.superlink] if self.superlink else [])]:
            daemon.popen.wait()  # reap: no zombie left behind

    def _spawn(self, name: str, cmd: list[str], home: Path) -> Daemon:
        home.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            popen = subprocess.Popen(cmd, env=flwr_env(home), stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        return Daemon(name, popen, log)

    # -- the processes ----------------------------------------------------------------------------------
    def superlink_command(self) -> list[str]:
        """``flower-superlink`` with TLS and node authentication as configured."""
        cmd = [flwr_bin("flower-superlink"), "--host", HOST, "--port", str(self.port),
               "--database", str(self.workdir / "superlink" / "state.db"),
               "--disable-runtime-dependency-installation"]  # fmt: skip
        if self.tls is None:
            cmd.append("--insecure")
        else:
            cmd += ["--ssl-ca-certfile", str(self.tls.ca_cert), "--ssl-certfile", str(self.tls.server_cert),
                    "--ssl-keyfile", str(self.tls.server_key)]  # fmt: skip
        if self.auth:
            cmd.append("--enable-supernode-auth")
        return cmd

    def start_superlink(self) -> Daemon:
        """Start the SuperLink and wait until its port accepts connections."""
        self.superlink = self._spawn("superlink", self.superlink_command(), self.workdir / "superlink")
        try:
            wait_for_port(HOST, self.port, self.start_timeout, self.superlink.pid)
        except (RuntimeError, TimeoutError) as err:
            raise RuntimeError(f"the SuperLink did not start: {err}\n{self.superlink.tail()}") from err
        return self.superlink

    def node_command(self, k: int, key: NodeKey | None) -> list[str]:
        """``flower-supernode`` for partition ``k``, with its own port, data root and (if any) key."""
        node_config = f"partition-id={k} num-partitions={self.num_nodes}"
        if self.data_root is not None:
            node_config += f" data-root={json.dumps(str(self.data_root))}"
        cmd = [flwr_bin("flower-supernode"), "--superlink", self.address, "--port", str(free_port(HOST)),
               "--node-config", node_config, "--max-retries", "3"]  # fmt: skip
        cmd += ["--insecure"] if self.tls is None else ["--root-certificates", str(self.tls.ca_cert)]
        if key is not None:
            cmd += ["--auth-supernode-private-key", str(key.private)]
        return cmd

    def start_node(self, k: int, register: bool = True) -> Daemon:
        """Start SuperNode ``k``; with authentication, make its key and register it first (unless not ``register``)."""
        key = None
        if self.auth:
            key = self.keys.get(k) or make_node_key(self.workdir / "certificates" / "keys", f"supernode-{k}")
            if register and k not in self.keys:
                self.register(key)
            self.keys[k] = key
        node = self._spawn(f"supernode-{k}", self.node_command(k, key), self.workdir / f"supernode-{k}")
        self.nodes[k] = node
        return node

    def register(self, key: NodeKey) -> None:
        """``flwr supernode register``: only registered keys may join a SuperLink with node authentication."""
        self._flwr(["supernode", "register", str(key.public), CONNECTION])

    def online_nodes(self) -> int:
        """SuperNodes the SuperLink sees online (``flwr supernode ls``)."""
        out = self._flwr(["supernode", "ls", CONNECTION, "--format", "json"])
        return sum(n["status"] == "online" for n in json.loads(out)["nodes"])

    def wait_online(self, count: int) -> None:
        """Block until ``count`` SuperNodes are online; fail with their logs if one exits."""
        deadline = time.monotonic() + self.start_timeout
        while (online := self.online_nodes()) < count:
            dead = [n for n in self.nodes.values() if not n.alive()]
            if dead or time.monotonic() > deadline:
                why = f"{dead[0].name} exited:\n{dead[0].tail()}" if dead else f"only {online} online"
                raise RuntimeError(f"SuperNodes did not come online ({why})")
            time.sleep(0.5)

    def kill_node(self, k: int) -> None:
        """Kill SuperNode ``k`` and its children now (SIGKILL: no goodbye to the SuperLink)."""
        stop_trees([self.nodes[k].pid], grace=0.0, sig=signal.SIGKILL)
        self.nodes[k].popen.wait()

    # -- the flwr CLI ---------------------------------------------------------------------------------
    def _write_cli_config(self) -> None:
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f'address = "{self.address}"']  # fmt: skip
        lines += ["insecure = true"] if self.tls is None else [f'root-certificates = "{self.tls.ca_cert}"']
        self.cli_home.mkdir(parents=True, exist_ok=True)
        (self.cli_home / "config.toml").write_text("\n".join(lines) + "\n")

    def _flwr(self, args: list[str], timeout: float = 60.0) -> str:
        proc = subprocess.run([flwr_bin(), *args], env=flwr_env(self.cli_home), capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"`flwr {' '.join(args)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def run_command(self, overrides: list[str], out_dir: Path) -> list[str]:
        """``flwr run . deployment`` with the Hydra overrides and the results folder as run config."""
        run_config = (f"overrides={json.dumps(shlex.join(overrides))} "
                      f"output-dir={json.dumps(str(Path(out_dir).resolve()))}")  # fmt: skip
        return [flwr_bin(), "run", str(PROJECT_DIR), CONNECTION, "--stream", "--run-config", run_config]

    def submit(self, overrides: list[str], out_dir: Path) -> Daemon:
        """Start ``flwr run`` without waiting (for tests that act during the run)."""
        to_config(compose_config(overrides))  # a bad value is refused here, before any process works
        return self._spawn("flwr-run", self.run_command(overrides, out_dir), self.cli_home)

    def wait(self, run: Daemon, timeout: float | None = None) -> str:
        """Wait for a submitted run; returns its final status, raises unless it completed."""
        try:
            run.popen.wait(timeout=timeout)
        finally:
            if run.popen.poll() is None:
                stop_trees([run.pid])
                run.popen.wait()
        status = last_run_status(self.cli_home, CONNECTION)
        if run.popen.returncode != 0 or status != "finished:completed":
            raise RuntimeError(f"flwr run failed (exit {run.popen.returncode}, status {status}):\n{run.tail(60)}")
        return status

    def run(self, overrides: list[str], out_dir: Path, timeout: float | None = None) -> str:
        """Run QKT over the SuperNodes; results in ``out_dir``. Raises unless the run completed."""
        return self.wait(self.submit(overrides, out_dir), timeout)
