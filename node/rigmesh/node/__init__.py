"""The node: provider and renter daemons around the rental engines (`open_node`)."""

from rigmesh.node.config import ChainSettings, NodeConfig, ProviderSettings, RenterSettings
from rigmesh.node.node import Node, NodeEvent, open_node

__all__ = [
    "ChainSettings", "Node", "NodeConfig", "NodeEvent", "ProviderSettings", "RenterSettings",
    "open_node",
]
