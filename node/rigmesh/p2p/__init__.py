"""Peer-to-peer shell: one narrow `Network` interface, a libp2p and an in-memory implementation,
offer gossip with validation and scoring, and the framed direct protocols (spec/p2p.md)."""
