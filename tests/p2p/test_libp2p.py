"""Two real libp2p hosts in one process: GossipSub versions and how an error frame ends."""

from __future__ import annotations

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID

from rigmesh.market.book import OfferBook
from rigmesh.p2p import framing, sync
from rigmesh.p2p.gossip import GossipConfig, OfferGossip
from rigmesh.p2p.host import open_libp2p_network
from rigmesh.p2p.network import SYNC_PROTOCOL
from rigmesh.wire.errors import Malformed
from rigmesh.wire.identity import PeerKey
from tests.factories import CHAIN_ID, NOW, Provider


async def test_a_gossipsub_1_0_peer_gets_and_gives_offers() -> None:
    """Most stacks fall back to /meshsub/1.0.0: a peer that speaks nothing newer joins the mesh
    both ways (spec/p2p.md 2.2)."""
    keys = [PeerKey(bytes([i + 40]) * 32) for i in range(2)]
    async with (
        open_libp2p_network(keys[0]) as ours,
        open_libp2p_network(keys[1], gossip_protocols=[PROTOCOL_ID]) as old,
    ):
        books = [OfferBook(chain_id=CHAIN_ID), OfferBook(chain_id=CHAIN_ID)]
        nodes = [
            OfferGossip(net, book, GossipConfig(chain_id=CHAIN_ID), clock=lambda: NOW, signer=k)
            for net, book, k in zip((ours, old), books, keys, strict=True)
        ]
        for g in nodes:
            await g.start()
        await old.connect(ours.addrs()[0])
        with trio.fail_after(30):  # both have registered each other on the topic
            while ID(old.peer_id) not in ours.router.peer_protocol:
                await trio.sleep(0.05)
        assert ours.router.peer_protocol[ID(old.peer_id)] == PROTOCOL_ID
        sent = [Provider(50 + i) for i in range(2)]
        with trio.fail_after(60):
            for i, (g, p) in enumerate(zip(nodes, sent, strict=True)):
                offer = p.signed(listing=i).encoded
                other = books[1 - i]
                while other.get(p.peer_id, i) is None:  # republish until the mesh carries it
                    await g.network.publish(g.topic, offer)
                    if books[i].get(p.peer_id, i) is None:
                        books[i].ingest(offer, NOW)
                    await trio.sleep(0.5)


async def test_an_error_frame_ends_the_stream_cleanly_for_a_slow_reader() -> None:
    """spec/p2p.md 4.3: the server answers garbage with one error frame and closes its side, as
    it would a response; no reset, so a requester that reads late still gets the frame and then
    a clean end of stream (the reset after a 1 s grace used to discard it)."""
    keys = [PeerKey(bytes([i + 60]) * 32) for i in range(2)]
    async with open_libp2p_network(keys[0]) as server, open_libp2p_network(keys[1]) as client:
        gossip = OfferGossip(server, OfferBook(chain_id=CHAIN_ID),
                             GossipConfig(chain_id=CHAIN_ID), clock=lambda: NOW)
        await gossip.start()
        await client.connect(server.addrs()[0])
        stream = await client.host.new_stream(ID(server.peer_id), [TProtocol(SYNC_PROTOCOL)])
        await stream.write(framing.frame(b"\xff garbage"))
        await stream.close()  # the requester's write side: it has nothing more to say
        await trio.sleep(1.5)  # the condition under test: a requester slower than the old grace
        with trio.fail_after(10):
            answer = await framing.read_frame(stream, sync.MAX_PAGE_SIZE)
            err = framing.decode_error(answer)
            assert isinstance(err, Malformed) and err.from_peer
            assert "reserved head 0xff at byte 0" in err.detail
            with pytest.raises(StreamEOF):  # a clean end of stream, not StreamReset
                await stream.read(1)
