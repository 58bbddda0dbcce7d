"""Escrow tests: model, differential model-vs-contract, chain adapter on py-evm and anvil."""
