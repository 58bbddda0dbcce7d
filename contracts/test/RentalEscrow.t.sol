// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {EscrowBase} from "./utils/EscrowBase.sol";
import {IRentalEscrow} from "../src/IRentalEscrow.sol";
import {RentalEscrow} from "../src/RentalEscrow.sol";
import {TestStablecoin} from "../src/test-tokens/TestStablecoin.sol";
import {FeeOnTransferToken} from "../src/test-tokens/FeeOnTransferToken.sol";
import {ReentrantToken} from "../src/test-tokens/ReentrantToken.sol";

/// @notice Rejects every ETH transfer (withdraw must surface EthTransferFailed).
contract RefusesEth {}

/// @notice Unit and fuzz tests. Section numbers follow the issue's list of properties.
contract RentalEscrowTest is EscrowBase {
    // ------------------------------------------------------------------ hashing and domain

    function test_rentalIdIsEip712TermsHash() public view {
        IRentalEscrow.Terms memory t = _ethTerms();
        vm.assertEq(escrow.rentalId(t), _termsHash(t), "rentalId");
        vm.assertEq(escrow.domainSeparator(), _domain(address(escrow), block.chainid), "domain");
    }

    function test_openLocksDepositAndEmits() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _termsHash(t);
        vm.expectEmit(address(escrow));
        emit IRentalEscrow.Opened(id, renter, provider, ETH, DEPOSIT, PRICE, MAX_SECONDS, WINDOW, signer, t.agreementId);
        vm.assertEq(_open(t), id, "returned id");
        (IRentalEscrow.Status st, uint256 dep, uint256 paid, uint64 openedAt, uint64 deadline) = _state(id);
        vm.assertTrue(st == IRentalEscrow.Status.Open, "open");
        vm.assertEq(dep, DEPOSIT, "deposit");
        vm.assertEq(paid, 0, "paid");
        vm.assertEq(openedAt, START, "openedAt");
        vm.assertEq(deadline, START + MAX_SECONDS + WINDOW, "hard deadline");
        vm.assertEq(escrow.balanceOf(ETH, renter), 100 ether - DEPOSIT, "renter debited");
    }

    function test_openChecks() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.NotRenter.selector, provider));
        vm.prank(provider);
        escrow.open(t);

        t.provider = address(0);
        vm.expectRevert(IRentalEscrow.InvalidTerms.selector);
        _open(t);
        t = _ethTerms();
        t.receiptSigner = address(0);
        vm.expectRevert(IRentalEscrow.InvalidTerms.selector);
        _open(t);
        t = _ethTerms();
        t.deposit = 0;
        vm.expectRevert(IRentalEscrow.InvalidTerms.selector);
        _open(t);
        t = _ethTerms();
        t.pricePerSecond = 0;
        vm.expectRevert(IRentalEscrow.InvalidTerms.selector);
        _open(t);
        t = _ethTerms();
        t.maxSeconds = 0;
        vm.expectRevert(IRentalEscrow.InvalidTerms.selector);
        _open(t);

        t = _ethTerms();
        t.challengeWindow = MIN_WINDOW - 1;
        vm.expectRevert(
            abi.encodeWithSelector(
                IRentalEscrow.ChallengeWindowOutOfBounds.selector, MIN_WINDOW - 1, MIN_WINDOW, MAX_WINDOW
            )
        );
        _open(t);
        t.challengeWindow = MAX_WINDOW + 1;
        vm.expectRevert(
            abi.encodeWithSelector(
                IRentalEscrow.ChallengeWindowOutOfBounds.selector, MAX_WINDOW + 1, MIN_WINDOW, MAX_WINDOW
            )
        );
        _open(t);

        t = _ethTerms();
        t.deposit = escrow.MAX_AMOUNT() + 1;
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.AmountTooLarge.selector, t.deposit));
        _open(t);

        t = _ethTerms();
        t.deposit = 100 ether + 1;
        vm.expectRevert(
            abi.encodeWithSelector(IRentalEscrow.InsufficientBalance.selector, ETH, renter, t.deposit, 100 ether)
        );
        _open(t);

        t = _ethTerms();
        bytes32 id = _open(t);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.RentalExists.selector, id));
        _open(t);
    }

    function test_hugeMaxSecondsCapsStoredDeadline() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        t.maxSeconds = type(uint64).max;
        bytes32 id = _open(t);
        vm.assertEq(_deadline(id), escrow.MAX_TIMESTAMP(), "capped");
    }

    // ------------------------------------------------------------------ 1. only the receipt signer

    function test_receiptSignedByOtherPartiesReverts() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        vm.warp(START + 100);
        IRentalEscrow.Receipt memory r = _receipt(id, 1, 100, 100 * PRICE);
        uint256[2] memory keys = [RENTER_KEY, PROVIDER_KEY];
        for (uint256 i = 0; i < keys.length; i++) {
            bytes memory sig = _signReceipt(keys[i], r);
            vm.expectRevert(IRentalEscrow.InvalidSignature.selector);
            vm.prank(provider);
            escrow.claim(t, r, sig);
            vm.expectRevert(IRentalEscrow.InvalidSignature.selector);
            vm.prank(provider);
            escrow.settle(t, r, sig);
        }
        bytes memory good = _signReceipt(SIGNER_KEY, r);
        vm.prank(provider);
        escrow.claim(t, r, good);
        vm.assertEq(_paid(id), 100 * PRICE, "paid by the real signer's receipt");
    }

    function testFuzz_receiptSignedByAnyOtherKeyReverts(uint256 key) public {
        key = bound(key, 1, SECP256K1_N - 1);
        vm.assume(key != SIGNER_KEY);
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        vm.warp(START + 10);
        IRentalEscrow.Receipt memory r = _receipt(id, 1, 10, 10 * PRICE);
        bytes memory sig = _signReceipt(key, r);
        vm.expectRevert(IRentalEscrow.InvalidSignature.selector);
        vm.prank(provider);
        escrow.claim(t, r, sig);
    }

    // ------------------------------------------------------------------ 2. bound to one rental, chain, contract

    function test_receiptForOtherRentalHasNoEffect() public {
        IRentalEscrow.Terms memory a = _ethTerms();
        IRentalEscrow.Terms memory b = _ethTerms();
        b.agreementId = keccak256("other agreement");
        bytes32 idA = _open(a);
        bytes32 idB = _open(b);
        vm.warp(START + 100);
        IRentalEscrow.Receipt memory r = _receipt(idA, 1, 100, 100 * PRICE);
        bytes memory sig = _signReceipt(SIGNER_KEY, r);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.WrongRental.selector, idB, idA));
        vm.prank(provider);
        escrow.claim(b, r, sig);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.WrongRental.selector, idB, idA));
        vm.prank(provider);
        escrow.settle(b, r, sig);
        vm.assertEq(_paid(idB), 0, "B untouched");
        vm.prank(provider);
        escrow.claim(a, r, sig);
        vm.assertEq(_paid(idA), 100 * PRICE, "A paid");
        vm.assertEq(_paid(idB), 0, "B still untouched");
    }

    function test_receiptForOtherChainOrContractRejected() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        vm.warp(START + 100);
        IRentalEscrow.Receipt memory r = _receipt(id, 1, 100, 100 * PRICE);

        bytes memory otherChain =
            _sign(SIGNER_KEY, _digest(_domain(address(escrow), block.chainid + 1), _receiptHash(r)));
        vm.expectRevert(IRentalEscrow.InvalidSignature.selector);
        vm.prank(provider);
        escrow.claim(t, r, otherChain);

        RentalEscrow other = _deployEscrow(MIN_WINDOW, MAX_WINDOW);
        bytes memory otherContract = _sign(SIGNER_KEY, _digest(_domain(address(other), block.chainid), _receiptHash(r)));
        vm.expectRevert(IRentalEscrow.InvalidSignature.selector);
        vm.prank(provider);
        escrow.claim(t, r, otherContract);

        // A signature made for this chain stops working if the chain id changes (fork replay).
        bytes memory here = _signReceipt(SIGNER_KEY, r);
        uint256 chain = 31337; // foundry.toml chain_id; a constant, not block.chainid, on purpose
        vm.chainId(chain + 7);
        vm.expectRevert(IRentalEscrow.InvalidSignature.selector);
        vm.prank(provider);
        escrow.claim(t, r, here);
        vm.chainId(chain);
        vm.prank(provider);
        escrow.claim(t, r, here);
    }

    // ------------------------------------------------------------------ 3. monotone payout, seq ignored

    function testFuzz_lowerAmountNeverLowersPaid(uint256 a1, uint256 a2, uint64 s1, uint64 s2, bool settleSecond)
        public
    {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        vm.warp(START + MAX_SECONDS);
        uint256 cap = PRICE * MAX_SECONDS;
        a1 = bound(a1, 1, cap);
        a2 = bound(a2, 0, cap);
        IRentalEscrow.Receipt memory r1 = _receipt(id, s1, MAX_SECONDS, a1);
        IRentalEscrow.Receipt memory r2 = _receipt(id, s2, MAX_SECONDS, a2);
        bytes memory sig1 = _signReceipt(SIGNER_KEY, r1);
        bytes memory sig2 = _signReceipt(SIGNER_KEY, r2);

        vm.prank(provider);
        escrow.claim(t, r1, sig1);
        uint256 paid1 = a1 < DEPOSIT ? a1 : DEPOSIT;
        vm.assertEq(_paid(id), paid1, "first claim");

        uint256 payable2 = a2 < DEPOSIT ? a2 : DEPOSIT;
        uint256 expected = payable2 > paid1 ? payable2 : paid1;
        if (settleSecond) {
            vm.prank(provider);
            escrow.settle(t, r2, sig2);
        } else {
            if (payable2 <= paid1) {
                vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.NothingToClaim.selector, payable2, paid1));
            }
            vm.prank(provider);
            escrow.claim(t, r2, sig2);
        }
        vm.assertEq(_paid(id), expected, "paid is the max");
        vm.assertGe(_paid(id), paid1, "never lowered");
        vm.assertEq(escrow.balanceOf(ETH, provider), expected, "provider credited the max");
    }

    function test_maxSeqDoesNotBlockHigherAmount() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        vm.warp(START + 200);
        IRentalEscrow.Receipt memory high = _receipt(id, type(uint64).max, 100, 100 * PRICE);
        vm.prank(provider);
        escrow.claim(t, high, _signReceipt(SIGNER_KEY, high));
        IRentalEscrow.Receipt memory later = _receipt(id, 2, 200, 200 * PRICE);
        vm.expectEmit(address(escrow));
        emit IRentalEscrow.Claimed(id, 2, 200, 200 * PRICE, 200 * PRICE);
        vm.prank(provider);
        escrow.claim(t, later, _signReceipt(SIGNER_KEY, later));
        vm.assertEq(_paid(id), 200 * PRICE, "later higher amount counts");
    }

    // ------------------------------------------------------------------ 4. conservation per rental

    function testFuzz_settleSplitsDepositExactly(uint256 dep, uint256 amount, uint64 uptime, uint256 claimFirst)
        public
    {
        dep = bound(dep, 1, 100 ether);
        uptime = uint64(bound(uptime, 0, MAX_SECONDS));
        amount = bound(amount, 0, PRICE * uptime);
        IRentalEscrow.Terms memory t = _terms(ETH, dep);
        bytes32 id = _open(t);
        vm.warp(START + uptime);
        uint256 renterBefore = escrow.balanceOf(ETH, renter);
        claimFirst = bound(claimFirst, 0, amount);
        if (claimFirst > 0) {
            IRentalEscrow.Receipt memory c = _receipt(id, 1, uptime, claimFirst);
            vm.prank(provider);
            escrow.claim(t, c, _signReceipt(SIGNER_KEY, c));
        }
        IRentalEscrow.Receipt memory r = _receipt(id, 2, uptime, amount);
        uint256 payout = amount < dep ? amount : dep;
        vm.expectEmit(address(escrow));
        emit IRentalEscrow.Settled(id, payout, dep - payout, uptime, provider);
        vm.prank(provider);
        escrow.settle(t, r, _signReceipt(SIGNER_KEY, r));
        uint256 toProvider = escrow.balanceOf(ETH, provider);
        uint256 toRenter = escrow.balanceOf(ETH, renter) - renterBefore;
        vm.assertLe(toProvider, dep, "payout <= deposit");
        vm.assertEq(toProvider + toRenter, dep, "payout + refund = deposit");
        vm.assertEq(toProvider, payout, "payout = min(amount, deposit)");
        vm.assertTrue(_status(id) == IRentalEscrow.Status.Closed, "closed");
    }

    function test_settleWithoutReceiptPaysClaimedOnly() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        vm.warp(START + 100);
        IRentalEscrow.Receipt memory r = _receipt(id, 1, 50, 50 * PRICE);
        vm.prank(provider);
        escrow.claim(t, r, _signReceipt(SIGNER_KEY, r));
        // Empty signature: the receipt's fields are ignored entirely, even a foreign rental id.
        IRentalEscrow.Receipt memory junk = _receipt(bytes32(uint256(1)), 9, 9999, type(uint256).max);
        vm.expectEmit(address(escrow));
        emit IRentalEscrow.Settled(id, 50 * PRICE, DEPOSIT - 50 * PRICE, 0, provider);
        vm.prank(provider);
        escrow.settle(t, junk, "");
        vm.assertEq(escrow.balanceOf(ETH, provider), 50 * PRICE, "provider keeps the claim");
        vm.assertEq(escrow.balanceOf(ETH, renter), 100 ether - 50 * PRICE, "renter gets the rest");
    }

    // ------------------------------------------------------------------ 5. price and elapsed time bound the amount

    function testFuzz_amountAbovePriceTimesUptimeReverts(uint64 uptime, uint256 excess) public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        uptime = uint64(bound(uptime, 0, MAX_SECONDS));
        vm.warp(START + uptime);
        uint256 maxAmount = PRICE * uptime;
        uint256 amount = maxAmount + bound(excess, 1, type(uint256).max - maxAmount);
        IRentalEscrow.Receipt memory r = _receipt(id, 1, uptime, amount);
        bytes memory sig = _signReceipt(SIGNER_KEY, r);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.AmountExceedsPrice.selector, amount, maxAmount));
        vm.prank(provider);
        escrow.claim(t, r, sig);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.AmountExceedsPrice.selector, amount, maxAmount));
        vm.prank(provider);
        escrow.settle(t, r, sig);
    }

    function testFuzz_uptimeAboveElapsedReverts(uint64 elapsed, uint64 uptime) public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        elapsed = uint64(bound(elapsed, 0, MAX_SECONDS));
        uptime = uint64(bound(uptime, uint256(elapsed) + 1, type(uint64).max));
        vm.warp(START + elapsed);
        IRentalEscrow.Receipt memory r = _receipt(id, 1, uptime, 0);
        bytes memory sig = _signReceipt(SIGNER_KEY, r);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.UptimeExceedsElapsed.selector, uptime, elapsed));
        vm.prank(provider);
        escrow.claim(t, r, sig);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.UptimeExceedsElapsed.selector, uptime, elapsed));
        vm.prank(provider);
        escrow.settle(t, r, sig);
    }

    function test_hugePriceDoesNotOverflow() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        t.pricePerSecond = type(uint256).max;
        bytes32 id = _open(t);
        vm.warp(START + 2);
        IRentalEscrow.Receipt memory r = _receipt(id, 1, 2, type(uint256).max);
        vm.prank(provider);
        escrow.settle(t, r, _signReceipt(SIGNER_KEY, r));
        vm.assertEq(escrow.balanceOf(ETH, provider), DEPOSIT, "capped by the deposit");
    }

    // ------------------------------------------------------------------ 6. roles

    function testFuzz_onlyProviderClaimsAndSettles(address caller) public {
        vm.assume(caller != provider);
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        vm.warp(START + 10);
        IRentalEscrow.Receipt memory r = _receipt(id, 1, 10, 10 * PRICE);
        bytes memory sig = _signReceipt(SIGNER_KEY, r);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.NotProvider.selector, caller));
        vm.prank(caller);
        escrow.claim(t, r, sig);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.NotProvider.selector, caller));
        vm.prank(caller);
        escrow.settle(t, r, sig);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.NotProvider.selector, caller));
        vm.prank(caller);
        escrow.settle(t, r, "");
    }

    function testFuzz_onlyRenterTopsUpAndRequestsClose(address caller) public {
        vm.assume(caller != renter);
        IRentalEscrow.Terms memory t = _ethTerms();
        _open(t);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.NotRenter.selector, caller));
        vm.prank(caller);
        escrow.topUp(t, 1);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.NotRenter.selector, caller));
        vm.prank(caller);
        escrow.requestClose(t);
    }

    function test_topUp() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        vm.expectEmit(address(escrow));
        emit IRentalEscrow.ToppedUp(id, 5, DEPOSIT + 5);
        vm.prank(renter);
        escrow.topUp(t, 5);
        (, uint256 dep,,,) = _state(id);
        vm.assertEq(dep, DEPOSIT + 5, "deposit grew");
        vm.assertEq(escrow.balanceOf(ETH, renter), 100 ether - DEPOSIT - 5, "renter debited");

        vm.expectRevert(IRentalEscrow.ZeroAmount.selector);
        vm.prank(renter);
        escrow.topUp(t, 0);
        uint256 tooMuch = escrow.MAX_AMOUNT() - DEPOSIT - 4;
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.AmountTooLarge.selector, tooMuch));
        vm.prank(renter);
        escrow.topUp(t, tooMuch);
        uint256 free = escrow.balanceOf(ETH, renter);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.InsufficientBalance.selector, ETH, renter, free + 1, free));
        vm.prank(renter);
        escrow.topUp(t, free + 1);

        vm.prank(renter);
        escrow.requestClose(t);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.CloseAlreadyRequested.selector, id));
        vm.prank(renter);
        escrow.topUp(t, 1);
    }

    function test_topUpAfterDeadlineReverts() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        uint64 deadline = _deadline(id);
        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.DeadlinePassed.selector, deadline));
        vm.prank(renter);
        escrow.topUp(t, 1);
    }

    // ------------------------------------------------------------------ 7. deadlines

    function testFuzz_finalizeOnlyAfterDeadline(uint256 closeAt, uint256 at, bool requestClose, address caller) public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        uint256 hard = START + MAX_SECONDS + WINDOW;
        uint256 deadline = hard;
        if (requestClose) {
            closeAt = bound(closeAt, START, hard);
            vm.warp(closeAt);
            vm.prank(renter);
            escrow.requestClose(t);
            deadline = closeAt + WINDOW < hard ? closeAt + WINDOW : hard;
        }
        vm.assertEq(_deadline(id), deadline, "deadline");
        at = bound(at, block.timestamp, hard + 1 days);
        vm.warp(at);
        if (at <= deadline) {
            vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.DeadlineNotReached.selector, deadline));
            vm.prank(caller);
            escrow.finalize(t);
        } else {
            vm.expectEmit(address(escrow));
            emit IRentalEscrow.Settled(id, 0, DEPOSIT, 0, caller);
            vm.prank(caller);
            escrow.finalize(t);
            vm.assertTrue(_status(id) == IRentalEscrow.Status.Closed, "closed");
        }
    }

    function test_noReceiptCountsAfterDeadline() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        // A second rental whose close is never requested; its hard deadline is START + 1 + WINDOW.
        IRentalEscrow.Terms memory shortTerms = _ethTerms();
        shortTerms.agreementId = keccak256("short");
        shortTerms.maxSeconds = 1;
        bytes32 shortId = _open(shortTerms);
        vm.warp(START + 100);
        vm.prank(renter);
        escrow.requestClose(t);
        uint64 deadline = _deadline(id);
        vm.assertEq(deadline, START + 100 + WINDOW, "close deadline");
        IRentalEscrow.Receipt memory r = _receipt(id, 1, 100, 100 * PRICE);
        bytes memory sig = _signReceipt(SIGNER_KEY, r);

        vm.warp(deadline); // the last second still counts
        IRentalEscrow.Receipt memory first = _receipt(id, 1, 50, 50 * PRICE);
        vm.prank(provider);
        escrow.claim(t, first, _signReceipt(SIGNER_KEY, first));

        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.DeadlinePassed.selector, deadline));
        vm.prank(provider);
        escrow.claim(t, r, sig);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.DeadlinePassed.selector, deadline));
        vm.prank(provider);
        escrow.settle(t, r, sig);
        // requestClose after the (hard) deadline is too late as well
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.DeadlinePassed.selector, _deadline(shortId)));
        vm.prank(renter);
        escrow.requestClose(shortTerms);

        // Without a receipt the provider may still close (same outcome as finalize).
        vm.prank(provider);
        escrow.settle(t, r, "");
        vm.assertEq(escrow.balanceOf(ETH, provider), 50 * PRICE, "only the in-time claim");
    }

    function test_requestCloseNeverExtendsHardDeadline() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        uint64 hard = _deadline(id);
        vm.warp(hard - 1);
        vm.expectEmit(address(escrow));
        emit IRentalEscrow.CloseRequested(id, hard);
        vm.prank(renter);
        escrow.requestClose(t);
        vm.assertEq(_deadline(id), hard, "capped at the hard deadline");
    }

    // ------------------------------------------------------------------ 8. once only

    function test_secondRequestCloseReverts() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        vm.prank(renter);
        escrow.requestClose(t);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.CloseAlreadyRequested.selector, id));
        vm.prank(renter);
        escrow.requestClose(t);
    }

    function test_settledRentalCannotBeTouched() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        vm.warp(START + 10);
        IRentalEscrow.Receipt memory r = _receipt(id, 1, 10, 10 * PRICE);
        bytes memory sig = _signReceipt(SIGNER_KEY, r);
        vm.prank(provider);
        escrow.settle(t, r, sig);
        bytes memory closed = abi.encodeWithSelector(IRentalEscrow.RentalClosed.selector, id);
        vm.expectRevert(closed);
        vm.prank(provider);
        escrow.settle(t, r, sig);
        vm.expectRevert(closed);
        vm.prank(provider);
        escrow.claim(t, r, sig);
        vm.expectRevert(closed);
        vm.prank(renter);
        escrow.topUp(t, 1);
        vm.expectRevert(closed);
        vm.prank(renter);
        escrow.requestClose(t);
        vm.warp(START + 1 days);
        vm.expectRevert(closed);
        escrow.finalize(t);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.RentalExists.selector, id));
        _open(t);
    }

    function test_unknownRentalReverts() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _termsHash(t);
        bytes memory unknown = abi.encodeWithSelector(IRentalEscrow.UnknownRental.selector, id);
        vm.expectRevert(unknown);
        escrow.finalize(t);
        vm.expectRevert(unknown);
        vm.prank(provider);
        escrow.settle(t, _receipt(id, 0, 0, 0), "");
        vm.expectRevert(unknown);
        vm.prank(renter);
        escrow.requestClose(t);
        (IRentalEscrow.Status st, uint256 dep, uint256 paid, uint64 openedAt, uint64 deadline) = _state(id);
        vm.assertTrue(st == IRentalEscrow.Status.None, "none");
        vm.assertEq(dep + paid + openedAt + deadline, 0, "zeros");
    }

    // ------------------------------------------------------------------ checks order

    function test_checksOrder() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _termsHash(t);
        IRentalEscrow.Receipt memory bad = _receipt(bytes32(0), 1, 10_000, type(uint256).max);
        bytes memory badSig = new bytes(65);
        // caller role before existence
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.NotProvider.selector, renter));
        vm.prank(renter);
        escrow.claim(t, bad, badSig);
        // existence before the receipt
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.UnknownRental.selector, id));
        vm.prank(provider);
        escrow.claim(t, bad, badSig);
        _open(t);
        // rental id before signature
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.WrongRental.selector, id, bytes32(0)));
        vm.prank(provider);
        escrow.claim(t, bad, badSig);
        // signature before amount and uptime
        bad.rentalId = id;
        vm.expectRevert(IRentalEscrow.InvalidSignature.selector);
        vm.prank(provider);
        escrow.claim(t, bad, badSig);
        // amount before uptime
        bytes memory sig = _signReceipt(SIGNER_KEY, bad);
        vm.expectRevert(
            abi.encodeWithSelector(IRentalEscrow.AmountExceedsPrice.selector, type(uint256).max, PRICE * 10_000)
        );
        vm.prank(provider);
        escrow.claim(t, bad, sig);
        // uptime before nothing-to-claim
        IRentalEscrow.Receipt memory zero = _receipt(id, 1, 5, 0);
        bytes memory zeroSig = _signReceipt(SIGNER_KEY, zero);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.UptimeExceedsElapsed.selector, uint64(5), 0));
        vm.prank(provider);
        escrow.claim(t, zero, zeroSig);
        vm.warp(START + 5);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.NothingToClaim.selector, 0, 0));
        vm.prank(provider);
        escrow.claim(t, zero, zeroSig);
        // deadline before the receipt's rental id
        vm.warp(START + MAX_SECONDS + WINDOW + 1);
        bad.rentalId = bytes32(0);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.DeadlinePassed.selector, START + MAX_SECONDS + WINDOW));
        vm.prank(provider);
        escrow.claim(t, bad, badSig);
    }

    // ------------------------------------------------------------------ 9. openFor

    function test_openForWithRenterSignature() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        uint256 deadline = START + 1 hours;
        bytes memory sig = _openRequestSig(RENTER_KEY, t, 0, deadline);
        address relayer = address(0xBEEF);
        vm.prank(relayer);
        bytes32 id = escrow.openFor(t, 0, deadline, sig);
        vm.assertEq(id, _termsHash(t), "id");
        vm.assertEq(escrow.nonces(renter), 1, "nonce used");
        vm.assertTrue(_status(id) == IRentalEscrow.Status.Open, "open");

        // reused: the nonce moved on
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.BadNonce.selector, 1, 0));
        escrow.openFor(t, 0, deadline, sig);
    }

    function test_openForRejectsBadSignatures() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        uint256 deadline = START + 1 hours;
        // signed by the provider, not the renter
        bytes memory other = _openRequestSig(PROVIDER_KEY, t, 0, deadline);
        vm.expectRevert(IRentalEscrow.InvalidSignature.selector);
        escrow.openFor(t, 0, deadline, other);
        // signed for other terms
        IRentalEscrow.Terms memory t2 = _ethTerms();
        t2.deposit = DEPOSIT + 1;
        bytes memory wrongTerms = _openRequestSig(RENTER_KEY, t2, 0, deadline);
        vm.expectRevert(IRentalEscrow.InvalidSignature.selector);
        escrow.openFor(t, 0, deadline, wrongTerms);
        // signed with another deadline
        bytes memory sig = _openRequestSig(RENTER_KEY, t, 0, deadline);
        vm.expectRevert(IRentalEscrow.InvalidSignature.selector);
        escrow.openFor(t, 0, deadline + 1, sig);
        // expired
        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.SignatureExpired.selector, deadline));
        escrow.openFor(t, 0, deadline, sig);
        // wrong nonce
        vm.warp(deadline);
        bytes memory future = _openRequestSig(RENTER_KEY, t, 5, deadline);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.BadNonce.selector, 0, 5));
        escrow.openFor(t, 5, deadline, future);
        escrow.openFor(t, 0, deadline, sig);
    }

    function testFuzz_openForAnyOtherKeyReverts(uint256 key) public {
        key = bound(key, 1, SECP256K1_N - 1);
        vm.assume(key != RENTER_KEY);
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes memory sig = _openRequestSig(key, t, 0, START);
        vm.expectRevert(IRentalEscrow.InvalidSignature.selector);
        escrow.openFor(t, 0, START, sig);
    }

    // ------------------------------------------------------------------ 10. tokens, reentrancy, msg.value

    function test_ethDepositMsgValueRules() public {
        vm.expectRevert(IRentalEscrow.ZeroAmount.selector);
        vm.prank(renter);
        escrow.deposit{value: 0}(ETH, 0);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.WrongMsgValue.selector, 2, 1));
        vm.prank(renter);
        escrow.deposit{value: 1}(ETH, 2);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.WrongMsgValue.selector, 1, 2));
        vm.prank(renter);
        escrow.deposit{value: 2}(ETH, 1);
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.WrongMsgValue.selector, 0, 1));
        vm.prank(renter);
        escrow.deposit{value: 1}(address(usd), 1);
        // a plain transfer has no way in: only deposit() credits ETH
        vm.prank(renter);
        (bool ok,) = address(escrow).call{value: 1}("");
        vm.assertTrue(!ok, "plain ETH refused");
    }

    function testFuzz_depositWithdrawRoundTrip(uint256 amount, bool eth) public {
        amount = bound(amount, 1, 1e30);
        address who = address(0xD00D);
        address token = eth ? ETH : address(usd);
        if (eth) {
            vm.deal(who, amount);
            vm.prank(who);
            escrow.deposit{value: amount}(ETH, amount);
        } else {
            usd.mint(who, amount);
            vm.prank(who);
            usd.approve(address(escrow), amount);
            vm.expectEmit(address(escrow));
            emit IRentalEscrow.Deposited(token, who, amount);
            vm.prank(who);
            escrow.deposit(token, amount);
        }
        vm.assertEq(escrow.balanceOf(token, who), amount, "credited");
        vm.expectRevert(
            abi.encodeWithSelector(IRentalEscrow.InsufficientBalance.selector, token, who, amount + 1, amount)
        );
        vm.prank(who);
        escrow.withdraw(token, amount + 1, who);
        vm.expectRevert(IRentalEscrow.ZeroAmount.selector);
        vm.prank(who);
        escrow.withdraw(token, 0, who);
        vm.expectEmit(address(escrow));
        emit IRentalEscrow.Withdrawn(token, who, address(0xCAFE), amount);
        vm.prank(who);
        escrow.withdraw(token, amount, address(0xCAFE));
        vm.assertEq(escrow.balanceOf(token, who), 0, "debited");
        vm.assertEq(eth ? address(0xCAFE).balance : usd.balanceOf(address(0xCAFE)), amount, "received");
    }

    function test_withdrawEthToRefusingContractReverts() public {
        RefusesEth sink = new RefusesEth();
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.EthTransferFailed.selector, address(sink), 1));
        vm.prank(renter);
        escrow.withdraw(ETH, 1, address(sink));
        vm.assertEq(escrow.balanceOf(ETH, renter), 100 ether, "balance restored by the revert");
    }

    /// @dev address(0) would burn ETH; the escrow itself would hold tokens credited to nobody.
    function test_withdrawToZeroOrEscrowReverts() public {
        address[2] memory tokens = [ETH, address(usd)];
        address[2] memory bad = [address(0), address(escrow)];
        for (uint256 k = 0; k < tokens.length; k++) {
            address token = tokens[k];
            uint256 free = escrow.balanceOf(token, renter);
            uint256 held = token == ETH ? address(escrow).balance : usd.balanceOf(address(escrow));
            for (uint256 i = 0; i < bad.length; i++) {
                vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.InvalidRecipient.selector, bad[i]));
                vm.prank(renter);
                escrow.withdraw(token, 1, bad[i]);
                vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.InvalidRecipient.selector, bad[i]));
                vm.prank(renter);
                escrow.withdraw(token, free, bad[i]);
            }
            vm.assertEq(escrow.balanceOf(token, renter), free, "free balance unchanged");
            vm.assertEq(
                token == ETH ? address(escrow).balance : usd.balanceOf(address(escrow)), held, "holdings unchanged"
            );
        }
    }

    /// @dev withdraw checks in order ZeroAmount, InsufficientBalance, InvalidRecipient.
    function test_withdrawChecksOrder() public {
        uint256 free = escrow.balanceOf(ETH, renter);
        vm.expectRevert(IRentalEscrow.ZeroAmount.selector);
        vm.prank(renter);
        escrow.withdraw(ETH, 0, address(0));
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.InsufficientBalance.selector, ETH, renter, free + 1, free));
        vm.prank(renter);
        escrow.withdraw(ETH, free + 1, address(escrow));
        vm.expectRevert(abi.encodeWithSelector(IRentalEscrow.InvalidRecipient.selector, address(0)));
        vm.prank(renter);
        escrow.withdraw(ETH, free, address(0));
    }

    function test_feeOnTransferDepositReverts() public {
        FeeOnTransferToken fot = new FeeOnTransferToken();
        fot.mint(renter, 10_000);
        vm.prank(renter);
        fot.approve(address(escrow), 10_000);
        vm.expectRevert(
            abi.encodeWithSelector(IRentalEscrow.FeeOnTransferNotSupported.selector, address(fot), 10_000, 9_900)
        );
        vm.prank(renter);
        escrow.deposit(address(fot), 10_000);
    }

    function test_reentrantTokenCannotReenter() public {
        ReentrantToken ree = new ReentrantToken();
        ree.mint(renter, 1_000);
        vm.prank(renter);
        ree.approve(address(escrow), type(uint256).max);
        vm.prank(renter);
        escrow.deposit(address(ree), 500);

        // deposit -> transferFrom -> escrow.withdraw
        ree.arm(address(escrow), abi.encodeCall(RentalEscrow.withdraw, (address(ree), 500, renter)));
        vm.expectRevert(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector);
        vm.prank(renter);
        escrow.deposit(address(ree), 100);

        // withdraw -> transfer -> escrow.withdraw (a second payout of the same balance)
        ree.arm(address(escrow), abi.encodeCall(RentalEscrow.withdraw, (address(ree), 500, renter)));
        vm.expectRevert(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector);
        vm.prank(renter);
        escrow.withdraw(address(ree), 500, renter);

        // withdraw -> transfer -> escrow.deposit
        ree.arm(address(escrow), abi.encodeCall(RentalEscrow.deposit, (address(ree), 1)));
        vm.expectRevert(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector);
        vm.prank(renter);
        escrow.withdraw(address(ree), 500, renter);

        vm.assertEq(escrow.balanceOf(address(ree), renter), 500, "nothing moved");
        vm.assertEq(ree.balanceOf(address(escrow)), 500, "escrow holds the same");
    }

    function test_depositWithPermit() public {
        uint256 ownerKey = 0x0E11;
        address owner = vm.addr(ownerKey);
        usd.mint(owner, 1e6);
        uint256 deadline = START + 1 hours;
        bytes32 permitHash = keccak256(
            abi.encode(
                keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"),
                owner,
                address(escrow),
                1e6,
                usd.nonces(owner),
                deadline
            )
        );
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(ownerKey, _digest(usd.DOMAIN_SEPARATOR(), permitHash));
        vm.expectRevert(IRentalEscrow.InvalidTerms.selector);
        escrow.depositWithPermit(owner, ETH, 1e6, deadline, v, r, s);
        vm.expectRevert(IRentalEscrow.ZeroAmount.selector);
        escrow.depositWithPermit(owner, address(usd), 0, deadline, v, r, s);
        // someone front-runs the permit itself: a stranger's deposit with it now fails (the
        // allowance is there, but nothing shows it came from this permit), the owner's works
        usd.permit(owner, address(escrow), 1e6, deadline, v, r, s);
        vm.prank(address(0xBEEF));
        vm.expectRevert(); // the token's own error: the permit's nonce is used
        escrow.depositWithPermit(owner, address(usd), 1e6, deadline, v, r, s);
        vm.assertEq(usd.balanceOf(owner), 1e6, "nothing moved");
        vm.prank(owner);
        escrow.depositWithPermit(owner, address(usd), 1e6, deadline, v, r, s);
        vm.assertEq(escrow.balanceOf(address(usd), owner), 1e6, "credited to the owner");
        // replayed permit with no allowance left: the token's own error comes back
        vm.prank(owner);
        vm.expectRevert();
        escrow.depositWithPermit(owner, address(usd), 1e6, deadline, v, r, s);
    }

    function test_depositWithPermit_strangerWithJunkSignatureMovesNothing() public {
        address owner = address(0x0E12);
        usd.mint(owner, 1e6);
        vm.prank(owner);
        usd.approve(address(escrow), 1e6); // approved for later, by the owner's own choice
        vm.prank(address(0xBEEF));
        vm.expectRevert(); // ECDSAInvalidSignature from the token's permit
        escrow.depositWithPermit(owner, address(usd), 1e6, START + 1 hours, 27, bytes32(0), bytes32(0));
        vm.assertEq(usd.balanceOf(owner), 1e6, "still the owner's");
        vm.assertEq(escrow.balanceOf(address(usd), owner), 0, "nothing credited");
    }

    function test_stablecoinRentalEndToEnd() public {
        IRentalEscrow.Terms memory t = _terms(address(usd), 1e9);
        t.pricePerSecond = 100; // 0.0001 tUSD a second
        bytes32 id = _open(t);
        vm.warp(START + 3600);
        IRentalEscrow.Receipt memory r = _receipt(id, 1, 3600, 360_000);
        vm.prank(provider);
        escrow.settle(t, r, _signReceipt(SIGNER_KEY, r));
        vm.prank(provider);
        escrow.withdraw(address(usd), 360_000, provider);
        vm.assertEq(usd.balanceOf(provider), 360_000, "provider paid in tUSD");
        vm.assertEq(usd.decimals(), 6, "6 decimals");
        vm.assertEq(escrow.balanceOf(address(usd), renter), 1e14 - 360_000, "renter refunded");
    }

    // ------------------------------------------------------------------ 12. signature malleability and shape

    function test_highSAndMalformedSignaturesRejected() public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        vm.warp(START + 10);
        IRentalEscrow.Receipt memory r = _receipt(id, 1, 10, 10 * PRICE);
        bytes32 digest = _digest(_domain(address(escrow), block.chainid), _receiptHash(r));
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(SIGNER_KEY, digest);
        // The mirrored signature (n - s, flipped v) is valid ECDSA for the same key: malleable.
        bytes memory highS = abi.encodePacked(rr, bytes32(SECP256K1_N - uint256(s)), v == 27 ? uint8(28) : uint8(27));
        vm.assertEq(ecrecover(digest, v == 27 ? 28 : 27, rr, bytes32(SECP256K1_N - uint256(s))), signer, "premise");
        bytes[] memory bad = new bytes[](8);
        bad[0] = highS;
        bad[1] = abi.encodePacked(rr, s); // 64 bytes (EIP-2098 compact is not accepted)
        bad[2] = abi.encodePacked(rr, s, v, uint8(0)); // 66 bytes
        bad[3] = abi.encodePacked(rr, s, uint8(v - 27)); // v = 0 / 1
        bad[4] = abi.encodePacked(rr, s, uint8(29));
        bad[5] = abi.encodePacked(bytes32(0), s, v); // r = 0
        bad[6] = new bytes(65);
        bad[7] = hex"01";
        for (uint256 i = 0; i < bad.length; i++) {
            vm.expectRevert(IRentalEscrow.InvalidSignature.selector);
            vm.prank(provider);
            escrow.claim(t, r, bad[i]);
            vm.expectRevert(IRentalEscrow.InvalidSignature.selector);
            vm.prank(provider);
            escrow.settle(t, r, bad[i]);
        }
        vm.prank(provider);
        escrow.claim(t, r, abi.encodePacked(rr, s, v));
    }

    function testFuzz_garbageSignatureRejected(bytes memory sig) public {
        IRentalEscrow.Terms memory t = _ethTerms();
        bytes32 id = _open(t);
        vm.assume(sig.length != 0);
        vm.warp(START + 10);
        IRentalEscrow.Receipt memory r = _receipt(id, 1, 10, 10 * PRICE);
        vm.expectRevert(IRentalEscrow.InvalidSignature.selector);
        vm.prank(provider);
        escrow.claim(t, r, sig);
    }

    function test_constructorRejectsInvertedWindowBounds() public {
        bytes memory code = _escrowCreationCode(10, 9);
        vm.assertEq(_create(code), address(0), "inverted bounds must not deploy");
        vm.assertTrue(_create(_escrowCreationCode(9, 9)) != address(0), "equal bounds deploy");
    }

    function test_testsRunTheCommittedArtifact() public view {
        bytes memory code = _escrowCreationCode(MIN_WINDOW, MAX_WINDOW);
        vm.assertTrue(address(escrow).code.length > 0 && code.length > 0, "deployed from artifact");
        vm.assertEq(escrow.minChallengeWindow(), MIN_WINDOW, "constructor arguments reached");
    }
}
