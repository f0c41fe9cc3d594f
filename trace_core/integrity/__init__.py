"""Integrity: verify committed data against manifests and the chain, repair broken ranges,
and consume data invalidations (reorgs, repairs) downstream."""
