"""A local anvil chain with deterministic activity, for tests, benchmarks and the demo.

``DevChain.start(blocks=3000, seed=7)`` launches anvil on a free loopback port, deploys a tiny
hand-assembled event emitter (no solc needed), and mines a chain of exactly ``blocks`` blocks
(``0 .. blocks-1``) where every few blocks carry ETH transfers and emitter calls. The number
of transactions and logs per block depends only on ``seed``; hashes and timestamps vary.

anvil runs with ``--hardfork cancun --prune-history``: on this machine prague's block-hash
history contract and per-block state snapshots make ``anvil_mine`` superlinear (~25 s for
5,000 blocks), while this setting mines 5,000 blocks in about half a second. Pruned history
means no state at old blocks (traces of old blocks fail); pass ``archive=True`` for that.

With ``monad=MonadShape(...)`` the chain is Monad-shaped (``devmonad``): anvil runs with OP-stack
rules, every block after genesis carries a system transaction minting its reward, every
transaction's gas limit is its exact gas, and automine stays off (``mine`` adds the reward).

The anvil process dies with its parent (PR_SET_PDEATHSIG) and on ``stop()``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from trace_core.errors import ConfigError, RpcError
from trace_core.rpc.client import RpcClient, hex_int
from trace_core.settings import REPO_ROOT
from trace_lite.devtools.devmonad import MonadShape, reward_transaction

log = logging.getLogger(__name__)

ANVIL_BIN_ENV = "TRACE_ANVIL_BIN"
ANVIL_NPM_PATH = Path("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
DEFAULT_CHAIN_ID = 31337
START_TIMEOUT_SECONDS = 15.0

# keccak256("Transfer(address,address,uint256)")
TRANSFER_TOPIC = "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"

# Runtime of the emitter. calldata = (amount, to, flag), three 32-byte words:
#   mstore(0, amount); log3(0, 32, TRANSFER_TOPIC, caller, to)
#   if flag != 0: log1(0, 32, flag)
EMITTER_RUNTIME = bytes.fromhex(
    "600035600052"  # PUSH1 0 CALLDATALOAD PUSH1 0 MSTORE
    "602035"  # PUSH1 0x20 CALLDATALOAD            (topic2 = to)
    "33"  # CALLER                                   (topic1)
    "7f"
    + TRANSFER_TOPIC  # PUSH32 topic0
    + "60206000a3"  # PUSH1 32 PUSH1 0 LOG3
    "60403515"  # PUSH1 0x40 CALLDATALOAD ISZERO
    "604057"  # PUSH1 0x40 JUMPI                     (flag == 0 -> STOP at 0x40)
    "604035"  # PUSH1 0x40 CALLDATALOAD              (topic0 = flag)
    "60206000a1"  # PUSH1 32 PUSH1 0 LOG1
    "00"  # STOP
    "5b00"  # 0x40: JUMPDEST STOP
)
# Init code: CODECOPY the runtime (which follows these 11 bytes) to memory 0 and RETURN it.
EMITTER_INITCODE = (
    bytes([0x60, len(EMITTER_RUNTIME), 0x80, 0x60, 0x0B, 0x60, 0x00, 0x39, 0x60, 0x00, 0xF3])
    + EMITTER_RUNTIME
)


def anvil_binary() -> Path:
    """``$TRACE_ANVIL_BIN``, else the npm package under the repo, else ``anvil`` on PATH.

    Raises ``ConfigError`` when none exists.
    """
    env = os.environ.get(ANVIL_BIN_ENV, "").strip()
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT / ANVIL_NPM_PATH)
    found = shutil.which("anvil")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ConfigError(
        "anvil binary not found (npm install @foundry-rs/anvil-linux-amd64, or set it)",
        field=ANVIL_BIN_ENV,
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class SeedSummary:
    """What seeding put on the chain: per-block transaction and log counts of busy blocks."""

    blocks: int = 0
    emitter: str = ""
    txs_per_block: dict[int, int] = field(default_factory=dict)
    logs_per_block: dict[int, int] = field(default_factory=dict)

    def transactions(self, start: int, end: int) -> int:
        return sum(c for n, c in self.txs_per_block.items() if start <= n < end)

    def logs(self, start: int, end: int) -> int:
        return sum(c for n, c in self.logs_per_block.items() if start <= n < end)


class DevChain:
    """A running anvil. Use ``DevChain.start(...)``, as a context manager or with ``stop()``."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        port: int,
        chain_id: int,
        stderr: IO[bytes],
        monad: MonadShape | None = None,
    ) -> None:
        self.process = process
        self._stderr = stderr
        self.port = port
        self.chain_id = chain_id
        self.rpc_url = f"http://127.0.0.1:{port}"
        self.rpc = RpcClient(self.rpc_url, label="devchain", timeout=60.0)
        self.seed_summary = SeedSummary()
        self.monad = monad

    def __repr__(self) -> str:
        return f"DevChain(port={self.port}, chain_id={self.chain_id})"

    @classmethod
    def start(
        cls,
        blocks: int = 1000,
        seed: int = 0,
        *,
        chain_id: int = DEFAULT_CHAIN_ID,
        activity_every: int = 10,
        max_txs_per_block: int = 6,
        archive: bool = False,
        genesis_timestamp: int | None = None,
        monad: MonadShape | None = None,
    ) -> DevChain:
        """Start anvil and mine ``blocks`` blocks (block numbers ``0 .. blocks-1``).

        Every ``activity_every`` blocks on average a block carries 1..``max_txs_per_block``
        transactions (transfers and emitter calls). With ``genesis_timestamp`` every block is
        one second after its parent, so the same arguments give the same chain, hashes
        included (the demo relies on it to resume). ``monad``: a Monad-shaped chain (module
        docstring). Raises ``ConfigError`` without anvil, ``RpcError`` if it does not come up.
        """
        chain = cls._launch(chain_id, archive, genesis_timestamp, monad)
        try:
            if genesis_timestamp is not None:
                chain.rpc.call("anvil_setBlockTimestampInterval", [1])
            chain.seed(
                blocks, seed, activity_every=activity_every, max_txs_per_block=max_txs_per_block
            )
        except BaseException:
            chain.stop()
            raise
        return chain

    @classmethod
    def _launch(
        cls,
        chain_id: int,
        archive: bool,
        genesis_timestamp: int | None = None,
        monad: MonadShape | None = None,
    ) -> DevChain:
        binary = anvil_binary()
        last_error: Exception | None = None
        for _ in range(3):
            port = _free_port()
            argv = [
                str(binary),
                "--host", "127.0.0.1",
                "--port", str(port),
                "--chain-id", str(chain_id),
                "--silent",
            ]  # fmt: skip
            # OP-stack rules for the minting deposit (devmonad); else cancun (see the top)
            argv += ["--network", "optimism"] if monad else ["--hardfork", "cancun"]
            if not archive:
                argv.append("--prune-history")
            if genesis_timestamp is not None:
                argv += ["--timestamp", str(genesis_timestamp)]
            stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads fork here before exec
            )
            chain = cls(process, port, chain_id, stderr, monad)
            try:
                chain._wait_ready()
                if monad:
                    chain.rpc.call("evm_setAutomine", [False])
                log.info("anvil started", extra={"port": port, "pid": process.pid})
                return chain
            except RpcError as exc:
                last_error = exc
                chain.stop()
        raise RpcError(f"anvil did not start: {last_error}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if self.process.poll() is not None:
                self._stderr.seek(0)
                err = self._stderr.read().decode(errors="replace")[-500:]
                raise RpcError(f"anvil exited with {self.process.returncode}: {err.strip()}")
            try:
                if self.rpc.chain_id() == self.chain_id:
                    return
            except RpcError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    # --- seeding -------------------------------------------------------------------------

    def head(self) -> int:
        return self.rpc.block_number()

    def mine(self, n: int) -> None:
        """Mine ``n`` blocks (including any pending transactions); on a Monad-shaped chain each
        with its reward's system transaction."""
        if n <= 0:
            return
        if self.monad is None:
            self.rpc.call("anvil_mine", [hex(n)])
            return
        head = self.head()
        for block in range(head + 1, head + n + 1):
            self.rpc.call("eth_sendTransaction", [reward_transaction(self.monad, block)])
            self.rpc.call("anvil_mine", ["0x1"])
            counts = self.seed_summary.txs_per_block
            counts[block] = counts.get(block, 0) + 1

    def gas_limit(self, tx: dict[str, str], default: int) -> str:
        """``default`` as the gas limit, or on a Monad-shaped chain the exact gas ``tx`` uses
        (so charging the limit, as Monad does, charges what anvil charges)."""
        if self.monad is None:
            return hex(default)
        probe = {k: v for k, v in tx.items() if k not in ("nonce", "gas")}
        return str(self.rpc.call("eth_estimateGas", [probe]))

    def send(self, tx: dict[str, str]) -> dict[str, Any]:
        """Send ``tx`` and return its receipt (on a Monad-shaped chain: mine its block)."""
        tx_hash = self.rpc.call("eth_sendTransaction", [tx])
        if self.monad is not None:
            self.mine(1)
        return self.wait_receipt(tx_hash)

    def wait_receipt(self, tx_hash: str, timeout: float = 10.0) -> dict[str, Any]:
        """The receipt of ``tx_hash``, polled until mined. Raises ``RpcError`` on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            receipt = self.rpc.get_transaction_receipt(tx_hash)
            if receipt is not None:
                return receipt
            if time.monotonic() > deadline:
                raise RpcError(f"devchain: transaction {tx_hash} not mined within {timeout:g}s")
            time.sleep(0.01)

    def seed(
        self, blocks: int, seed: int, *, activity_every: int = 10, max_txs_per_block: int = 6
    ) -> SeedSummary:
        """Extend the chain to ``blocks`` blocks with deterministic activity; return the summary."""
        if blocks < 3:
            raise ValueError("a seeded chain needs at least 3 blocks")
        rng = random.Random(seed)
        accounts: list[str] = self.rpc.call("eth_accounts")
        summary = self.seed_summary
        create = {"from": accounts[0], "data": "0x" + EMITTER_INITCODE.hex()}
        receipt = self.send({**create, "gas": self.gas_limit(create, 300_000)})
        if hex_int(receipt["status"]) != 1:
            raise RpcError("devchain: emitter deployment failed")
        emitter = receipt["contractAddress"]
        summary.emitter = emitter
        deploy_block = hex_int(receipt["blockNumber"])
        summary.txs_per_block[deploy_block] = summary.txs_per_block.get(deploy_block, 0) + 1
        summary.logs_per_block[deploy_block] = 0
        nonces = {
            a: hex_int(self.rpc.call("eth_getTransactionCount", [a, "pending"])) for a in accounts
        }
        self.rpc.call("evm_setAutomine", [False])
        try:
            head = self.head()
            while head < blocks - 1:
                gap = min(rng.randint(0, 2 * activity_every - 2), blocks - 2 - head)
                self.mine(gap)
                head += gap
                txs, logs = self._busy_block(rng, accounts, nonces, emitter, max_txs_per_block)
                self.mine(1)
                head += 1
                summary.txs_per_block[head] = summary.txs_per_block.get(head, 0) + txs
                summary.logs_per_block[head] = logs
        finally:
            self.rpc.call("evm_setAutomine", [self.monad is None])
        summary.blocks = self.head() + 1
        if summary.blocks != blocks:
            raise RpcError(f"devchain: expected {blocks} blocks, chain has {summary.blocks}")
        return summary

    def _busy_block(
        self,
        rng: random.Random,
        accounts: list[str],
        nonces: dict[str, int],
        emitter: str,
        max_txs: int,
    ) -> tuple[int, int]:
        calls = []
        logs = 0
        for _ in range(rng.randint(1, max_txs)):
            sender = accounts[rng.randrange(1, len(accounts))]
            to = accounts[rng.randrange(len(accounts))]
            tx: dict[str, str] = {"from": sender, "nonce": hex(nonces[sender])}
            nonces[sender] += 1
            if rng.random() < 0.5:
                tx.update(to=to, value=hex(rng.randint(1, 10**15)), gas=hex(21_000))  # exact
            else:
                flag = rng.randint(1, 2**32) if rng.random() < 0.3 else 0
                data = rng.randint(1, 10**18).to_bytes(32, "big")
                data += bytes.fromhex(to[2:]).rjust(32, b"\0") + flag.to_bytes(32, "big")
                tx.update(to=emitter, data="0x" + data.hex())
                tx["gas"] = self.gas_limit(tx, 100_000)
                logs += 2 if flag else 1
            calls.append(("eth_sendTransaction", [tx]))
        self.rpc.batch(calls)
        return len(calls), logs

    # --- verification over JSON-RPC -------------------------------------------------------

    def count_blocks(self, start: int, end: int) -> int:
        """Blocks that exist in ``[start, end)``."""
        return max(0, min(end, self.head() + 1) - start)

    def count_transactions(self, start: int, end: int) -> int:
        return sum(self.rpc.transaction_counts(start, end))

    def count_logs(self, start: int, end: int) -> int:
        return self.rpc.log_count(start, end)

    # --- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Terminate anvil (kill after 5 s) and close the client. Idempotent."""
        self.rpc.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        with contextlib.suppress(OSError):
            self._stderr.close()

    def __enter__(self) -> DevChain:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
