"""Real `clickhouse-server` processes for tests and benchmarks: one node, or a two-shard cluster.

Each node gets its own config files and data directory under a temporary directory, listens on
127.0.0.1 only, on free non-default ports, and runs as the current user (root in CI). Every
node's config lists the same `remote_servers` cluster, so any node can be the entry point of a
Distributed table. There is no ZooKeeper: eventkeep creates its tables on each node itself.

Debian's `clickhouse-server` 18.16.1 is the only version CI can install; it starts in well
under a second, so tests can stop and restart shards freely.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx

CLUSTER = "eventkeep_test"
SERVER_BINARY = "clickhouse-server"


def available() -> bool:
    return shutil.which(SERVER_BINARY) is not None


def _free_ports(count: int) -> list[int]:
    """Ports that are free now; held open together so the kernel hands out distinct ones."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


USERS_XML = """<?xml version="1.0"?>
<yandex>
  <profiles>
    <default>
      <max_memory_usage>2000000000</max_memory_usage>
      <background_pool_size>2</background_pool_size>
      <max_threads>2</max_threads>
      <!-- A shard that hangs (rather than dies) fails distributed queries after 3 x 10 s
           instead of 300 s: recommended for eventkeep's user (docs/scale-out.md). -->
      <receive_timeout>10</receive_timeout>
      <send_timeout>10</send_timeout>
    </default>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas>
    <default>
      <interval>
        <duration>3600</duration><queries>0</queries><errors>0</errors>
        <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
      </interval>
    </default>
  </quotas>
</yandex>
"""


@dataclass
class ClickHouseNode:
    """One `clickhouse-server` process; stop and start it again on the same data and ports."""

    root: Path
    http_port: int
    tcp_port: int
    interserver_port: int
    cluster_tcp_ports: Sequence[int] = ()
    process: subprocess.Popen[bytes] | None = None
    _log: object = field(default=None, repr=False)

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://{self.http_address}"

    def write_config(self) -> None:
        for sub in ("data", "tmp", "user_files", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        shards = "".join(
            f"<shard><replica><host>127.0.0.1</host><port>{port}</port></replica></shard>"
            for port in self.cluster_tcp_ports
        )
        remote = f"<remote_servers><{CLUSTER}>{shards}</{CLUSTER}></remote_servers>" if shards else ""
        (self.root / "users.xml").write_text(USERS_XML)
        (self.root / "config.xml").write_text(f"""<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>{self.root}/log/server.log</log>
    <errorlog>{self.root}/log/error.log</errorlog>
    <size>10M</size><count>1</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{self.http_port}</http_port>
  <tcp_port>{self.tcp_port}</tcp_port>
  <interserver_http_port>{self.interserver_port}</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <path>{self.root}/data/</path>
  <tmp_path>{self.root}/tmp/</tmp_path>
  <user_files_path>{self.root}/user_files/</user_files_path>
  <users_config>{self.root}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>134217728</mark_cache_size>
  <uncompressed_cache_size>134217728</uncompressed_cache_size>
  <max_concurrent_queries>200</max_concurrent_queries>
  <keep_alive_timeout>30</keep_alive_timeout>
  {remote}
</yandex>
""")

    def start(self, timeout: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.write_config()
        log = open(self.root / "log" / "stdout.log", "ab")  # noqa: SIM115 - lives with the process
        self._log = log
        self.process = subprocess.Popen(
            [SERVER_BINARY, f"--config-file={self.root / 'config.xml'}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"clickhouse-server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/ping", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"clickhouse-server did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        parts = []
        for name in ("stdout.log", "error.log"):
            path = self.root / "log" / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None
        log = self._log
        if log is not None:
            log.close()  # type: ignore[attr-defined]
            self._log = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def query(self, sql: str, timeout: float = 30.0) -> str:
        """Run one statement over HTTP and return its text output (for assertions)."""
        response = httpx.post(f"{self.url}/", content=sql.encode(), timeout=timeout)
        if response.status_code != 200:
            raise RuntimeError(f"ClickHouse error {response.status_code}: {response.text}")
        return response.text


@dataclass
class ClickHouseCluster:
    """N single-replica shards that all know each other as cluster `eventkeep_test`."""

    nodes: list[ClickHouseNode]

    def store_url(self, database: str, *, sharded: bool = True, extra: str = "") -> str:
        """A `clickhouse://` store URL through the first node (and the cluster when sharded)."""
        first = self.nodes[0]
        url = f"clickhouse://{first.http_address}/{quote(database)}"
        params = []
        if sharded and len(self.nodes) > 1:
            params.append(f"cluster={CLUSTER}")
            params.append("nodes=" + ",".join(node.http_address for node in self.nodes))
        if extra:
            params.append(extra)
        return url + ("?" + "&".join(params) if params else "")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(root: Path, shards: int = 2) -> ClickHouseCluster:
    """Start `shards` nodes; each is also a usable single server on its own."""
    ports = _free_ports(3 * shards)
    tcp_ports = [ports[3 * i + 1] for i in range(shards)]
    nodes = [
        ClickHouseNode(
            root=root / f"node{i + 1}",
            http_port=ports[3 * i],
            tcp_port=ports[3 * i + 1],
            interserver_port=ports[3 * i + 2],
            cluster_tcp_ports=tcp_ports,
        )
        for i in range(shards)
    ]
    cluster = ClickHouseCluster(nodes)
    try:
        for node in nodes:
            node.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


if __name__ == "__main__":  # manual use: start a cluster and print its store URL
    import sys
    import tempfile

    base = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="eventkeep-ch-"))
    running = start_cluster(base, int(os.environ.get("SHARDS", "2")))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(running.store_url("eventkeep"), flush=True)
    try:
        signal.pause()
    finally:
        running.stop()
