"""rigsim: the Rigmesh research simulator. A discrete-event loop over the protocol's own pure
core (the rental machines, the offer book, the escrow model, the p2p policies) with thousands of
simulated peers. See simulations/README.md."""
