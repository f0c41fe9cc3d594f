"""What makes a local anvil chain Monad-shaped: a block reward minted by a system transaction in
every block, and transactions charged on their gas limit.

Monad mints each block's reward with a system transaction from its system sender to the staking
precompile (``syscallReward(address blockAuthor)`` with the reward as ``msg.value``: 25 MON,
18 MON since MIP-12); system transactions are free; every other transaction pays the base fee
on its whole gas limit (no refund) and the base fee is burned.

anvil has one transaction that creates value: the OP-stack deposit (``--network optimism``),
whose ``mint`` credits its sender before it runs, for free. So a Monad-shaped ``DevChain`` runs
anvil in that mode and puts, in every block after genesis, a deposit from Monad's system
address to the staking address minting the block's reward and sending it there: the prestate
tracer (cryo ``geth_balance_diffs``) sees the staking address gain the reward and nobody lose
it, as on Monad. Its calldata is not ``syscallReward(author)``'s: the staking stand-in
(``devstaking``) logs what its calldata describes, so it carries Monad's
``ValidatorRewarded(validatorId, from, amount, epoch)`` event, logged once ``devstaking`` is
installed (before that the deposit is a plain transfer).

What anvil cannot model, and how the chain stands in:
- **Base fee burned.** With OP-stack rules anvil pays the base fee to the BaseFeeVault
  (``BASE_FEE_VAULT``) instead of burning it. Jobs over this chain name the vault in
  ``supply.burn_addresses`` (balances there are out of circulation), which makes the ledger
  read as Monad's: the base fee leaves supply.
- **Charged on the gas limit, no refund.** anvil charges gas used and refunds the rest. The chain
  sends every transaction with its exact gas as the limit (``eth_estimateGas``) and nothing
  that earns a refund, so gas limit = gas used and both rules charge the same; jobs reconcile
  with ``supply.charge: gas_limit`` (Monad's rule) over a cryo ``transactions`` stream. A
  transaction with a looser limit would be charged less on anvil than on Monad.
- **System transactions in a block's gas.** A deposit's gas counts in the block's
  ``gas_used``; Monad's system transactions are free, and the reconciliation charges only
  transactions from other senders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trace_core.chain_sync.analytics_spec import MONAD_STAKING_ADDRESS, MONAD_SYSTEM_ADDRESS

MON = 10**18
BASE_FEE_VAULT = "0x4200000000000000000000000000000000000019"
# keccak256("ValidatorRewarded(uint64,address,uint256,uint64)"), as compute.STAKING_TOPICS
VALIDATOR_REWARDED_TOPIC = "3a420a01486b6b28d6ae89c51f5c3bde3e0e74eecbb646a0c481ccba3aae3754"
SYSTEM_TX_GAS = 100_000


@dataclass(frozen=True)
class MonadShape:
    """The reward schedule of a Monad-shaped chain.

    ``block_reward_wei`` is minted in every block after genesis, ``reward_changes`` switch it
    from a block on (MIP-12: ``{block: 18 * MON}``), and ``mint_overrides`` mint another
    amount in one block (a deliberately broken block, for the reconciliation to catch).
    """

    block_reward_wei: int = 25 * MON
    reward_changes: Mapping[int, int] = field(default_factory=dict)
    mint_overrides: Mapping[int, int] = field(default_factory=dict)
    validator_id: int = 1  # the block author's validator, named in ValidatorRewarded

    def reward_at(self, block: int) -> int:
        """The protocol's reward of ``block`` (0 at genesis)."""
        if block <= 0:
            return 0
        reward = self.block_reward_wei
        for start in sorted(self.reward_changes):
            if block >= start:
                reward = self.reward_changes[start]
        return reward

    def minted_at(self, block: int) -> int:
        """What the chain actually mints in ``block`` (the reward, unless overridden)."""
        return self.mint_overrides.get(block, self.reward_at(block))

    def supply_spec(self, blocks: str, transactions: str) -> dict[str, Any]:
        """The ``analytics.supply`` block that reconciles a job over this chain."""
        return {
            "blocks": blocks,
            "transactions": transactions,
            "charge": "gas_limit",
            "block_reward_wei": self.block_reward_wei,
            "reward_changes": [
                {"from_block": b, "block_reward_wei": w}
                for b, w in sorted(self.reward_changes.items())
            ],
            "burn_addresses": [BASE_FEE_VAULT],
        }


def reward_transaction(shape: MonadShape, block: int) -> dict[str, str | bool]:
    """The system transaction minting ``block``'s reward: a free OP-stack deposit from Monad's
    system address to the staking address with the reward as value, whose calldata has the
    stand-in log ``ValidatorRewarded(validator_id, system address, reward, epoch 0)``. Its
    ``sourceHash`` is the block number, so each block's deposit has its own hash."""
    amount = shape.minted_at(block)
    words = [shape.validator_id, int(MONAD_SYSTEM_ADDRESS, 16), amount, 0]
    calldata = VALIDATOR_REWARDED_TOPIC + "".join(f"{w:064x}" for w in words)
    return {
        "from": MONAD_SYSTEM_ADDRESS,
        "to": MONAD_STAKING_ADDRESS,
        "value": hex(amount),
        "mint": hex(amount),
        "sourceHash": "0x" + block.to_bytes(32, "big").hex(),
        "isSystemTx": False,
        "gas": hex(SYSTEM_TX_GAS),
        "data": "0x" + calldata,
    }
