"""A stand-in for Monad's staking precompile on a local anvil chain, and a driver for it.

Monad's staking system is a precompile at ``0x...1000`` that anvil does not have. This puts a
tiny hand-assembled contract at that address (``anvil_setCode``) that emits whatever LOG3 its
caller describes, then drives it with the IMonadStaking events the analytics decode:
``ValidatorCreated(uint64 indexed validatorId, address indexed authAddress, uint256
commission)``, ``Delegate(uint64 indexed validatorId, address indexed delegator, uint256
amount, uint64 activationEpoch)`` and ``Undelegate(uint64 indexed validatorId, address
indexed delegator, uint8 withdrawId, uint256 amount, uint64 activationEpoch)``: the same
address, topics and data layout as Monad's, so the same SQL reads both. Delegations send
their amount as the call's value, like the payable ``delegate`` (undelegations return
nothing here; Monad pays out on ``withdraw``).

Assumption: a validator's self-stake at creation is logged as a ``Delegate`` from its auth
address (Monad's addValidator delegates the sent value to the new validator).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from trace_core.analytics.compute import STAKING_TOPICS
from trace_core.chain_sync.analytics_spec import MONAD_STAKING_ADDRESS
from trace_core.errors import RpcError
from trace_core.rpc.client import hex_int
from trace_lite.devtools.devchain import DevChain

# calldata = topic0 | topic1 | topic2 | data...: LOG3(data, topic0, topic1, topic2). Shorter
# calldata logs nothing (the value is kept either way).
LOG3_EMITTER_RUNTIME = bytes.fromhex(
    "6060361060"
    "1e"
    "57"  # PUSH1 0x60 CALLDATASIZE LT PUSH1 0x1e JUMPI   (size < 96 -> 0x1e)
    "604035"  # PUSH1 0x40 CALLDATALOAD           topic2
    "602035"  # PUSH1 0x20 CALLDATALOAD           topic1
    "600035"  # PUSH1 0x00 CALLDATALOAD           topic0
    "60603603"  # PUSH1 0x60 CALLDATASIZE SUB     len = calldatasize - 96
    "80"  # DUP1
    "6060600037"  # PUSH1 0x60 PUSH1 0 CALLDATACOPY   memory[0:len] = calldata[96:]
    "6000a3"  # PUSH1 0 LOG3
    "00"  # STOP
    "5b00"  # 0x1e: JUMPDEST STOP
)
WEI = 10**18


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _address_word(address: str) -> bytes:
    return bytes.fromhex(address[2:]).rjust(32, b"\0")


@dataclass
class StakingActivity:
    """What the driver did: each event as ``(event, validator_id, address, amount)``."""

    address: str = MONAD_STAKING_ADDRESS
    events: list[tuple[str, int, str, int]] = field(default_factory=list)
    first_block: int = 0
    last_block: int = 0


def install(chain: DevChain, address: str = MONAD_STAKING_ADDRESS) -> None:
    """Put the LOG3 emitter at ``address`` (Monad's staking precompile address by default)."""
    chain.rpc.call("anvil_setCode", [address, "0x" + LOG3_EMITTER_RUNTIME.hex()])


def _emit(
    chain: DevChain,
    sender: str,
    address: str,
    event: str,
    validator: int,
    who: str,
    data: bytes,
    value: int = 0,
) -> int:
    calldata = bytes.fromhex(STAKING_TOPICS[event]) + _word(validator) + _address_word(who) + data
    tx = {"from": sender, "to": address, "data": "0x" + calldata.hex()}
    if value:
        tx["value"] = hex(value)
    receipt = chain.send({**tx, "gas": chain.gas_limit(tx, 100_000)})
    if hex_int(receipt["status"]) != 1:
        raise RpcError(f"devstaking: {event} call reverted")
    return hex_int(receipt["blockNumber"])


def drive(
    chain: DevChain,
    *,
    seed: int = 11,
    validators: int = 4,
    actions: int = 30,
    address: str = MONAD_STAKING_ADDRESS,
    max_gap_blocks: int = 0,
) -> StakingActivity:
    """Install the emitter, create ``validators`` validators (self-stake from dev accounts),
    then ``actions`` deterministic delegations/undelegations, one transaction per block
    (``DevChain.send``), with up to ``max_gap_blocks`` empty blocks mined before each action
    so the stake moves over a longer span. Returns what was emitted; needs automine on, or a
    Monad-shaped chain (whose ``send`` mines the block)."""
    install(chain, address)
    rng = random.Random(seed)
    accounts: list[str] = [str(a).lower() for a in chain.rpc.call("eth_accounts")]
    activity = StakingActivity(address=address)
    stake: dict[tuple[int, str], int] = {}
    blocks: list[int] = []
    for v in range(1, validators + 1):
        auth = accounts[v % len(accounts)]
        commission = rng.randint(0, 10) * 10**16
        blocks.append(_emit(chain, auth, address, "validator_created", v, auth, _word(commission)))
        activity.events.append(("validator_created", v, auth, 0))
        amount = rng.randint(50, 500) * WEI
        blocks.append(
            _emit(chain, auth, address, "delegate", v, auth, _word(amount) + _word(1), amount)
        )
        activity.events.append(("delegate", v, auth, amount))
        stake[(v, auth)] = amount
    for _ in range(actions):
        if max_gap_blocks:
            chain.mine(rng.randint(0, max_gap_blocks))
        held = [(k, s) for k, s in stake.items() if s > 0]
        if held and rng.random() < 0.3:
            (v, who), have = held[rng.randrange(len(held))]
            amount = have if rng.random() < 0.3 else rng.randint(1, have)
            data = _word(rng.randint(0, 255)) + _word(amount) + _word(2)
            blocks.append(_emit(chain, who, address, "undelegate", v, who, data))
            activity.events.append(("undelegate", v, who, amount))
            stake[(v, who)] = have - amount
        else:
            v = rng.randint(1, validators)
            who = accounts[rng.randrange(1, len(accounts))]
            amount = rng.randint(1, 200) * WEI + rng.randint(0, 10**9)
            blocks.append(
                _emit(chain, who, address, "delegate", v, who, _word(amount) + _word(2), amount)
            )
            activity.events.append(("delegate", v, who, amount))
            stake[(v, who)] = stake.get((v, who), 0) + amount
    activity.first_block, activity.last_block = min(blocks), max(blocks)
    return activity
