// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Test} from "./utils/Test.sol";
import {EscrowDeployer} from "./utils/EscrowDeployer.sol";
import {IRentalEscrow} from "../src/IRentalEscrow.sol";
import {RentalEscrow} from "../src/RentalEscrow.sol";
import {TestStablecoin} from "../src/test-tokens/TestStablecoin.sol";

/// @notice Drives the escrow through random sequences of every state-changing call, by the right
/// parties with valid-looking inputs (so most calls succeed and the state space is explored), plus
/// time jumps. It records which accounts and rentals exist so the invariants can sum over them.
contract EscrowHandler is Test {
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant RECEIPT_TYPEHASH =
        keccak256("Receipt(bytes32 rentalId,uint64 seq,uint64 uptimeSeconds,uint256 amount,bytes32 evidence)");

    RentalEscrow public immutable escrow;
    TestStablecoin public immutable usd;

    address[] public tokens;
    address[] public actors; // renters and providers; every free balance belongs to one of them
    uint256[] private _signerKeys; // receipt signer of renter i
    IRentalEscrow.Terms[] private _rentals;
    bytes32[] public rentalIds;

    mapping(address token => uint256) public ghostIn;
    mapping(address token => uint256) public ghostOut;
    uint256 public calls;
    mapping(bytes4 selector => uint256) public succeeded;
    uint64 private _seq;

    constructor(RentalEscrow escrow_, TestStablecoin usd_) {
        escrow = escrow_;
        usd = usd_;
        tokens.push(address(0));
        tokens.push(address(usd_));
        for (uint256 i = 0; i < 4; i++) {
            address a = vm.addr(0x1000 + i);
            actors.push(a);
            _signerKeys.push(0x2000 + i);
            vm.prank(a);
            usd_.approve(address(escrow_), type(uint256).max);
        }
    }

    function actorCount() external view returns (uint256) {
        return actors.length;
    }

    function rentalCount() external view returns (uint256) {
        return rentalIds.length;
    }

    function rental(uint256 i) external view returns (IRentalEscrow.Terms memory) {
        return _rentals[i];
    }

    // ------------------------------------------------------------------ actions
    // Each action picks parties and amounts that make it likely to succeed; what still reverts
    // (a claim that adds nothing, a receipt after the deadline...) is caught and changes nothing.

    function deposit(uint256 actorSeed, uint256 tokenSeed, uint256 amount) public {
        address who = actors[actorSeed % actors.length];
        address token = tokens[tokenSeed % tokens.length];
        amount = bound(amount, 1, 1e24);
        if (token == address(0)) {
            vm.deal(who, who.balance + amount);
            vm.prank(who);
            escrow.deposit{value: amount}(token, amount);
        } else {
            usd.mint(who, amount);
            vm.prank(who);
            escrow.deposit(token, amount);
        }
        ghostIn[token] += amount;
        _ok(this.deposit.selector);
    }

    function withdraw(uint256 actorSeed, uint256 tokenSeed, uint256 amount, uint256 toSeed) external {
        address who = actors[actorSeed % actors.length];
        address token = tokens[tokenSeed % tokens.length];
        uint256 free = escrow.balanceOf(token, who);
        if (free == 0) return;
        amount = bound(amount, 1, free);
        // Now and then a recipient the escrow must refuse: address(0) (ETH burned) or the escrow
        // itself (held for nobody). The revert changes nothing, so the invariants still hold.
        uint256 pick = toSeed % 8;
        if (pick < 2) {
            address bad = pick == 0 ? address(0) : address(escrow);
            vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.InvalidRecipient.selector, bad));
            vm.prank(who);
            escrow.withdraw(token, amount, bad);
            return;
        }
        vm.prank(who);
        escrow.withdraw(token, amount, address(0xD1E));
        ghostOut[token] += amount;
        _ok(this.withdraw.selector);
    }

    function open(uint256 renterSeed, uint256 providerSeed, uint256 tokenSeed, uint256 dep, uint256 price, uint64 secs)
        external
    {
        uint256 ri = renterSeed % actors.length;
        address who = actors[ri];
        address token = tokens[tokenSeed % tokens.length];
        if (escrow.balanceOf(token, who) == 0) deposit(ri, tokenSeed, dep);
        uint256 free = escrow.balanceOf(token, who);
        IRentalEscrow.Terms memory t = IRentalEscrow.Terms({
            renter: who,
            provider: actors[providerSeed % actors.length],
            token: token,
            deposit: bound(dep, 1, free < escrow.MAX_AMOUNT() ? free : escrow.MAX_AMOUNT()),
            pricePerSecond: bound(price, 1, 1e18),
            maxSeconds: uint64(bound(secs, 1, 2 hours)),
            challengeWindow: uint64(bound(secs >> 16, 60, 30 minutes)),
            receiptSigner: vm.addr(_signerKeys[ri]),
            agreementId: bytes32(rentalIds.length)
        });
        vm.prank(who);
        bytes32 id = escrow.open(t);
        _rentals.push(t);
        rentalIds.push(id);
        _ok(this.open.selector);
    }

    function topUp(uint256 rentalSeed, uint256 amount) external {
        (bool found, uint256 i) = _pickOpen(rentalSeed);
        if (!found) return;
        IRentalEscrow.Terms memory t = _rentals[i];
        uint256 free = escrow.balanceOf(t.token, t.renter);
        if (free == 0) return;
        amount = bound(amount, 1, free);
        vm.prank(t.renter);
        try escrow.topUp(t, amount) {
            _ok(this.topUp.selector);
        } catch {}
    }

    function claim(uint256 rentalSeed, uint256 uptime, uint256 amount) external {
        (bool found, uint256 i) = _pickOpen(rentalSeed);
        if (!found) return;
        (IRentalEscrow.Terms memory t, IRentalEscrow.Receipt memory r, bytes memory sig) =
            _signedReceipt(i, uptime, amount);
        vm.prank(t.provider);
        try escrow.claim(t, r, sig) {
            _ok(this.claim.selector);
        } catch {}
    }

    function settle(uint256 rentalSeed, uint256 uptime, uint256 amount, bool withoutReceipt) external {
        (bool found, uint256 i) = _pickOpen(rentalSeed);
        if (!found) return;
        (IRentalEscrow.Terms memory t, IRentalEscrow.Receipt memory r, bytes memory sig) =
            _signedReceipt(i, uptime, amount);
        if (withoutReceipt) sig = "";
        vm.prank(t.provider);
        try escrow.settle(t, r, sig) {
            _ok(this.settle.selector);
        } catch {}
    }

    function requestClose(uint256 rentalSeed) external {
        (bool found, uint256 i) = _pickOpen(rentalSeed);
        if (!found) return;
        IRentalEscrow.Terms memory t = _rentals[i];
        vm.prank(t.renter);
        try escrow.requestClose(t) {
            _ok(this.requestClose.selector);
        } catch {}
    }

    function finalize(uint256 rentalSeed) external {
        (bool found, uint256 i) = _pickOpen(rentalSeed);
        if (!found) return;
        try escrow.finalize(_rentals[i]) {
            _ok(this.finalize.selector);
        } catch {}
    }

    function warp(uint256 secondsForward) external {
        vm.warp(block.timestamp + bound(secondsForward, 1, 1 hours));
    }

    // ------------------------------------------------------------------ helpers

    /// @dev The first Open rental at or after `seed` (mod count), so actions rarely hit closed ones.
    function _pickOpen(uint256 seed) private view returns (bool, uint256) {
        uint256 n = rentalIds.length;
        for (uint256 k = 0; k < n; k++) {
            uint256 i = (seed % n + k) % n;
            (IRentalEscrow.Status st,,,,) = escrow.rentalState(rentalIds[i]);
            if (st == IRentalEscrow.Status.Open) return (true, i);
        }
        return (false, 0);
    }

    /// @dev A receipt within price x elapsed time, signed by rental i's receipt signer.
    function _signedReceipt(uint256 i, uint256 uptime, uint256 amount)
        private
        returns (IRentalEscrow.Terms memory t, IRentalEscrow.Receipt memory r, bytes memory sig)
    {
        t = _rentals[i];
        (,,, uint64 openedAt,) = escrow.rentalState(rentalIds[i]);
        uptime = bound(uptime, 0, block.timestamp - openedAt);
        amount = bound(amount, 0, t.pricePerSecond * uptime);
        r = IRentalEscrow.Receipt({
            rentalId: rentalIds[i], seq: ++_seq, uptimeSeconds: uint64(uptime), amount: amount, evidence: 0
        });
        bytes32 domain = keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("Rigmesh Escrow"), keccak256("1"), block.chainid, address(escrow))
        );
        bytes32 structHash =
            keccak256(abi.encode(RECEIPT_TYPEHASH, r.rentalId, r.seq, r.uptimeSeconds, r.amount, r.evidence));
        (uint8 v, bytes32 rr, bytes32 s) =
            vm.sign(_signerKeys[_renterIndex(t.renter)], keccak256(abi.encodePacked("\x19\x01", domain, structHash)));
        sig = abi.encodePacked(rr, s, v);
    }

    function _ok(bytes4 action) private {
        calls++;
        succeeded[action]++;
    }

    function _renterIndex(address who) private view returns (uint256) {
        for (uint256 i = 0; i < actors.length; i++) {
            if (actors[i] == who) return i;
        }
        revert("unknown actor");
    }
}

/// @notice 11. For every token, the escrow's balance equals the sum of free balances plus what open
/// rentals still hold; no rental ever pays more than its deposit.
contract RentalEscrowInvariantTest is EscrowDeployer {
    RentalEscrow internal escrow;
    TestStablecoin internal usd;
    EscrowHandler internal handler;

    function setUp() public {
        vm.warp(1_700_000_000);
        escrow = _deployEscrow(60, 7 days);
        usd = new TestStablecoin();
        handler = new EscrowHandler(escrow, usd);
        targetContract(address(handler));
    }

    function _held(address token) internal view returns (uint256 total) {
        for (uint256 i = 0; i < handler.actorCount(); i++) {
            total += escrow.balanceOf(token, handler.actors(i));
        }
        for (uint256 i = 0; i < handler.rentalCount(); i++) {
            IRentalEscrow.Terms memory t = handler.rental(i);
            if (t.token != token) continue;
            (IRentalEscrow.Status st, uint256 dep, uint256 paid,,) = escrow.rentalState(handler.rentalIds(i));
            if (st == IRentalEscrow.Status.Open) total += dep - paid;
        }
    }

    /// @notice Nothing is ever stuck: after the last deadline anyone finalizes every open rental,
    /// everyone withdraws, and the escrow ends up holding nothing.
    function afterInvariant() public {
        vm.warp(block.timestamp + 1 days); // past every deadline (maxSeconds + window <= 2.5 hours)
        for (uint256 i = 0; i < handler.rentalCount(); i++) {
            if (_status(handler.rentalIds(i)) == IRentalEscrow.Status.Open) escrow.finalize(handler.rental(i));
        }
        address[2] memory tokens = [address(0), address(usd)];
        for (uint256 k = 0; k < tokens.length; k++) {
            for (uint256 i = 0; i < handler.actorCount(); i++) {
                address who = handler.actors(i);
                uint256 free = escrow.balanceOf(tokens[k], who);
                if (free == 0) continue;
                vm.prank(who);
                escrow.withdraw(tokens[k], free, address(0xD1E));
            }
        }
        vm.assertEq(address(escrow).balance, 0, "ETH left behind");
        vm.assertEq(usd.balanceOf(address(escrow)), 0, "tUSD left behind");
    }

    function _status(bytes32 id) internal view returns (IRentalEscrow.Status st) {
        (st,,,,) = escrow.rentalState(id);
    }

    function invariant_conservation() public view {
        vm.assertEq(address(escrow).balance, _held(address(0)), "ETH: balance != free + locked");
        vm.assertEq(usd.balanceOf(address(escrow)), _held(address(usd)), "tUSD: balance != free + locked");
    }

    function invariant_balanceIsDepositsMinusWithdrawals() public view {
        vm.assertEq(address(escrow).balance, handler.ghostIn(address(0)) - handler.ghostOut(address(0)), "ETH flow");
        vm.assertEq(
            usd.balanceOf(address(escrow)), handler.ghostIn(address(usd)) - handler.ghostOut(address(usd)), "tUSD flow"
        );
    }

    function invariant_paidNeverExceedsDeposit() public view {
        for (uint256 i = 0; i < handler.rentalCount(); i++) {
            (IRentalEscrow.Status st, uint256 dep, uint256 paid, uint64 openedAt, uint64 deadline) =
                escrow.rentalState(handler.rentalIds(i));
            vm.assertTrue(st != IRentalEscrow.Status.None, "opened rental exists");
            vm.assertLe(paid, dep, "paid <= deposit");
            vm.assertLe(openedAt, deadline, "openedAt <= deadline");
        }
    }
}
