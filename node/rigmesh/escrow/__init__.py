"""The shared escrow contract: its executable model, typed errors and the chain adapter.

`model` and `errors` are protocol core (pure, no I/O); `client` is the shell that talks to a
chain through web3.
"""
