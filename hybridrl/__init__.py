"""hybridrl: policy gradients that learn from on-policy, off-policy and offline data."""

__version__ = "0.1.0"
