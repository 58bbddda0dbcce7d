// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {IRentalEscrow} from "./IRentalEscrow.sol";

/// @title Rigmesh rental escrow
/// @notice One shared deployment holds every rental's deposit. The provider is paid exactly what
/// the renter's receipt signer signed, capped by the deposit and by price times chain time since
/// open; the rest returns to the renter. No owner, no admin, no upgrade, no pause.
/// @dev Normative text: spec/escrow.md. Each rental is ONE storage word (see the layout below) and
/// its terms come back as calldata with every call: the rental id is their EIP-712 hash, so the
/// contract never stores them. Payouts only credit free balances (pull model); the only external
/// calls are token transfers in deposit, depositWithPermit and withdraw, which are nonReentrant.
contract RentalEscrow is IRentalEscrow, EIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice Largest deposit (and so paid amount) a rental can hold: 2^87 - 1 base units.
    uint256 public constant MAX_AMOUNT = (1 << 87) - 1;
    /// @notice Deadlines are stored in 40 bits; a hard deadline past this is stored as this value
    /// (year 36812, so it changes nothing a chain can observe except `rentalState`'s number).
    uint256 public constant MAX_TIMESTAMP = (1 << 40) - 1;

    /// @notice EIP-712 type hashes (spec/escrow.md §2); rigmesh.wire.eip712 defines the same strings.
    bytes32 public constant TERMS_TYPEHASH = keccak256(
        "Terms(address renter,address provider,address token,uint256 deposit,uint256 pricePerSecond,"
        "uint64 maxSeconds,uint64 challengeWindow,address receiptSigner,bytes32 agreementId)"
    );
    bytes32 public constant RECEIPT_TYPEHASH =
        keccak256("Receipt(bytes32 rentalId,uint64 seq,uint64 uptimeSeconds,uint256 amount,bytes32 evidence)");
    bytes32 public constant OPEN_REQUEST_TYPEHASH = keccak256(
        "OpenRequest(Terms terms,uint256 nonce,uint256 deadline)"
        "Terms(address renter,address provider,address token,uint256 deposit,uint256 pricePerSecond,"
        "uint64 maxSeconds,uint64 challengeWindow,address receiptSigner,bytes32 agreementId)"
    );

    // Rental word layout, least significant bit first. Zero means "no such rental": an open
    // rental always has deposit > 0 and openedAt > 0.
    //   [  0,  87) deposit        [ 87, 174) paid
    //   [174, 214) openedAt       [214, 254) deadline (hard deadline, or the close deadline)
    //   bit 254    closeRequested bit 255    closed
    uint256 private constant _AMOUNT_MASK = (1 << 87) - 1;
    uint256 private constant _TIME_MASK = (1 << 40) - 1;
    uint256 private constant _PAID_SHIFT = 87;
    uint256 private constant _OPENED_SHIFT = 174;
    uint256 private constant _DEADLINE_SHIFT = 214;
    uint256 private constant _CLOSE_REQUESTED = 1 << 254;
    uint256 private constant _CLOSED = 1 << 255;

    /// @notice Smallest and largest challenge window a rental may choose, in seconds.
    uint64 public immutable minChallengeWindow;
    uint64 public immutable maxChallengeWindow;

    mapping(address token => mapping(address account => uint256)) private _balances;
    mapping(bytes32 rentalId => uint256) private _rentals;
    mapping(address renter => uint256) private _nonces;

    /// @param minChallengeWindow_ smallest challengeWindow terms may carry (seconds)
    /// @param maxChallengeWindow_ largest challengeWindow terms may carry (seconds)
    constructor(uint64 minChallengeWindow_, uint64 maxChallengeWindow_) EIP712("Rigmesh Escrow", "1") {
        if (minChallengeWindow_ > maxChallengeWindow_) revert InvalidTerms();
        minChallengeWindow = minChallengeWindow_;
        maxChallengeWindow = maxChallengeWindow_;
    }

    // ------------------------------------------------------------------ free balances

    /// @inheritdoc IRentalEscrow
    /// @dev Reverts ZeroAmount, WrongMsgValue(expected, actual), FeeOnTransferNotSupported.
    function deposit(address token, uint256 amount) external payable nonReentrant {
        if (amount == 0) revert ZeroAmount();
        if (token == address(0)) {
            if (msg.value != amount) revert WrongMsgValue(amount, msg.value);
        } else {
            if (msg.value != 0) revert WrongMsgValue(0, msg.value);
            _pull(token, msg.sender, amount);
        }
        _balances[token][msg.sender] += amount;
        emit Deposited(token, msg.sender, amount);
    }

    /// @inheritdoc IRentalEscrow
    /// @dev Reverts ZeroAmount, InvalidTerms (token 0 has no permit), FeeOnTransferNotSupported.
    /// A failing permit is tolerated only when the owner itself calls and its allowance already
    /// covers the amount (then this is `deposit` of tokens it approved); for anyone else the
    /// permit's revert data is passed on, so a junk signature never moves an owner's tokens.
    function depositWithPermit(
        address owner,
        address token,
        uint256 amount,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        if (token == address(0)) revert InvalidTerms();
        try IERC20Permit(token).permit(owner, address(this), amount, deadline, v, r, s) {}
        catch (bytes memory reason) {
            if (msg.sender != owner || IERC20(token).allowance(owner, address(this)) < amount) {
                assembly ("memory-safe") {
                    revert(add(reason, 0x20), mload(reason))
                }
            }
        }
        _pull(token, owner, amount);
        _balances[token][owner] += amount;
        emit Deposited(token, owner, amount);
    }

    /// @inheritdoc IRentalEscrow
    /// @dev Reverts, in this order: ZeroAmount, InsufficientBalance, InvalidRecipient (`to` is
    /// address(0) or this contract, for ETH and ERC-20 alike), then EthTransferFailed or the
    /// token's own error. The balance is debited before the transfer (checks-effects-interactions).
    function withdraw(address token, uint256 amount, address to) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        uint256 available = _balances[token][msg.sender];
        if (available < amount) revert InsufficientBalance(token, msg.sender, amount, available);
        if (to == address(0) || to == address(this)) revert InvalidRecipient(to);
        unchecked {
            _balances[token][msg.sender] = available - amount;
        }
        emit Withdrawn(token, msg.sender, to, amount);
        if (token == address(0)) {
            (bool ok,) = to.call{value: amount}("");
            if (!ok) revert EthTransferFailed(to, amount);
        } else {
            IERC20(token).safeTransfer(to, amount);
        }
    }

    /// @inheritdoc IRentalEscrow
    function balanceOf(address token, address account) external view returns (uint256) {
        return _balances[token][account];
    }

    // ------------------------------------------------------------------ opening

    /// @inheritdoc IRentalEscrow
    /// @dev Reverts, in this order: NotRenter, InvalidTerms, ChallengeWindowOutOfBounds,
    /// AmountTooLarge, RentalExists, InsufficientBalance.
    function open(Terms calldata terms) external returns (bytes32) {
        if (msg.sender != terms.renter) revert NotRenter(msg.sender);
        return _open(terms, _hashTerms(terms));
    }

    /// @inheritdoc IRentalEscrow
    /// @dev Reverts SignatureExpired, BadNonce, InvalidSignature (not 65 bytes, high s, bad v, or
    /// signed by anyone but terms.renter), then as `open`.
    function openFor(Terms calldata terms, uint256 nonce, uint256 deadline, bytes calldata signature)
        external
        returns (bytes32)
    {
        if (block.timestamp > deadline) revert SignatureExpired(deadline);
        address renter = terms.renter;
        uint256 expected = _nonces[renter];
        if (nonce != expected) revert BadNonce(expected, nonce);
        bytes32 id = _hashTerms(terms);
        bytes32 digest = _hashTypedDataV4(keccak256(abi.encode(OPEN_REQUEST_TYPEHASH, id, nonce, deadline)));
        if (_recover(digest, signature) != renter) revert InvalidSignature();
        unchecked {
            _nonces[renter] = expected + 1;
        }
        return _open(terms, id);
    }

    /// @inheritdoc IRentalEscrow
    /// @dev Reverts, in this order: NotRenter, UnknownRental, RentalClosed, CloseAlreadyRequested,
    /// DeadlinePassed, ZeroAmount, AmountTooLarge(amount) (new deposit over MAX_AMOUNT),
    /// InsufficientBalance.
    function topUp(Terms calldata terms, uint256 amount) external {
        if (msg.sender != terms.renter) revert NotRenter(msg.sender);
        bytes32 id = _hashTerms(terms);
        uint256 word = _requireOpen(id);
        if (word & _CLOSE_REQUESTED != 0) revert CloseAlreadyRequested(id);
        _requireBeforeDeadline(word);
        if (amount == 0) revert ZeroAmount();
        uint256 current = word & _AMOUNT_MASK;
        if (amount > MAX_AMOUNT - current) revert AmountTooLarge(amount);
        _debit(terms.token, msg.sender, amount);
        // deposit occupies the lowest bits and stays within its mask, so adding is exact.
        _rentals[id] = word + amount;
        emit ToppedUp(id, amount, current + amount);
    }

    // ------------------------------------------------------------------ paying

    /// @inheritdoc IRentalEscrow
    /// @dev Reverts, in this order: NotProvider, UnknownRental, RentalClosed, DeadlinePassed,
    /// WrongRental, InvalidSignature, AmountExceedsPrice, UptimeExceedsElapsed, NothingToClaim.
    function claim(Terms calldata terms, Receipt calldata receipt, bytes calldata signature) external {
        if (msg.sender != terms.provider) revert NotProvider(msg.sender);
        bytes32 id = _hashTerms(terms);
        uint256 word = _requireOpen(id);
        uint256 payable_ = _checkReceipt(terms, id, word, receipt, signature);
        uint256 paid = (word >> _PAID_SHIFT) & _AMOUNT_MASK;
        if (payable_ <= paid) revert NothingToClaim(payable_, paid);
        // Effects only: the provider's free balance grows, nothing leaves the contract.
        _rentals[id] = (word & ~(_AMOUNT_MASK << _PAID_SHIFT)) | (payable_ << _PAID_SHIFT);
        unchecked {
            _balances[terms.token][msg.sender] += payable_ - paid;
        }
        emit Claimed(id, receipt.seq, receipt.uptimeSeconds, receipt.amount, payable_);
    }

    /// @inheritdoc IRentalEscrow
    /// @dev Reverts, in this order: NotProvider, UnknownRental, RentalClosed, and for a non-empty
    /// signature DeadlinePassed, WrongRental, InvalidSignature, AmountExceedsPrice,
    /// UptimeExceedsElapsed. A valid receipt below what was claimed adds nothing and does not revert.
    function settle(Terms calldata terms, Receipt calldata receipt, bytes calldata signature) external {
        if (msg.sender != terms.provider) revert NotProvider(msg.sender);
        bytes32 id = _hashTerms(terms);
        uint256 word = _requireOpen(id);
        uint256 paid = (word >> _PAID_SHIFT) & _AMOUNT_MASK;
        uint256 newPaid = paid;
        uint64 uptime;
        if (signature.length != 0) {
            uint256 payable_ = _checkReceipt(terms, id, word, receipt, signature);
            if (payable_ > newPaid) newPaid = payable_;
            uptime = receipt.uptimeSeconds;
        }
        _close(terms, id, word, paid, newPaid, uptime);
    }

    /// @inheritdoc IRentalEscrow
    /// @dev Reverts, in this order: NotRenter, UnknownRental, RentalClosed, CloseAlreadyRequested,
    /// DeadlinePassed. The new deadline is min(now + challengeWindow, current deadline).
    function requestClose(Terms calldata terms) external {
        if (msg.sender != terms.renter) revert NotRenter(msg.sender);
        bytes32 id = _hashTerms(terms);
        uint256 word = _requireOpen(id);
        if (word & _CLOSE_REQUESTED != 0) revert CloseAlreadyRequested(id);
        uint256 deadline = _requireBeforeDeadline(word);
        uint256 closeDeadline = block.timestamp + terms.challengeWindow;
        if (closeDeadline < deadline) deadline = closeDeadline;
        _rentals[id] = (word & ~(_TIME_MASK << _DEADLINE_SHIFT)) | (deadline << _DEADLINE_SHIFT) | _CLOSE_REQUESTED;
        // forge-lint: disable-next-line(unsafe-typecast)
        emit CloseRequested(id, uint64(deadline)); // deadline <= MAX_TIMESTAMP < 2^40
    }

    /// @inheritdoc IRentalEscrow
    /// @dev Reverts UnknownRental, RentalClosed, DeadlineNotReached(deadline) while
    /// block.timestamp <= deadline.
    function finalize(Terms calldata terms) external {
        bytes32 id = _hashTerms(terms);
        uint256 word = _requireOpen(id);
        uint256 deadline = (word >> _DEADLINE_SHIFT) & _TIME_MASK;
        if (block.timestamp <= deadline) revert DeadlineNotReached(deadline);
        uint256 paid = (word >> _PAID_SHIFT) & _AMOUNT_MASK;
        _close(terms, id, word, paid, paid, 0);
    }

    // ------------------------------------------------------------------ views

    /// @inheritdoc IRentalEscrow
    /// @dev A closed rental keeps its final deposit, paid, openedAt and deadline; an unknown id
    /// returns all zeros.
    function rentalState(bytes32 id)
        external
        view
        returns (Status status, uint256 deposit_, uint256 paid, uint64 openedAt, uint64 deadline)
    {
        uint256 word = _rentals[id];
        if (word == 0) return (Status.None, 0, 0, 0, 0);
        status = word & _CLOSED != 0 ? Status.Closed : Status.Open;
        deposit_ = word & _AMOUNT_MASK;
        paid = (word >> _PAID_SHIFT) & _AMOUNT_MASK;
        // Both are masked to 40 bits, so the casts cannot truncate.
        // forge-lint: disable-next-line(unsafe-typecast)
        openedAt = uint64((word >> _OPENED_SHIFT) & _TIME_MASK);
        // forge-lint: disable-next-line(unsafe-typecast)
        deadline = uint64((word >> _DEADLINE_SHIFT) & _TIME_MASK);
    }

    /// @inheritdoc IRentalEscrow
    function nonces(address renter) external view returns (uint256) {
        return _nonces[renter];
    }

    /// @inheritdoc IRentalEscrow
    function rentalId(Terms calldata terms) external pure returns (bytes32) {
        return _hashTerms(terms);
    }

    /// @notice The EIP-712 domain separator (name "Rigmesh Escrow", version "1", this chain, this
    /// contract) that receipts and open requests are signed under.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // ------------------------------------------------------------------ internals

    function _open(Terms calldata terms, bytes32 id) private returns (bytes32) {
        if (
            terms.renter == address(0) || terms.provider == address(0) || terms.receiptSigner == address(0)
                || terms.deposit == 0 || terms.pricePerSecond == 0 || terms.maxSeconds == 0
        ) revert InvalidTerms();
        uint64 window = terms.challengeWindow;
        if (window < minChallengeWindow || window > maxChallengeWindow) {
            revert ChallengeWindowOutOfBounds(window, minChallengeWindow, maxChallengeWindow);
        }
        uint256 amount = terms.deposit;
        if (amount > MAX_AMOUNT) revert AmountTooLarge(amount);
        if (_rentals[id] != 0) revert RentalExists(id);
        _debit(terms.token, terms.renter, amount);
        uint256 deadline = block.timestamp + terms.maxSeconds + window; // < 2^66: no overflow
        if (deadline > MAX_TIMESTAMP) deadline = MAX_TIMESTAMP;
        _rentals[id] = amount | (block.timestamp << _OPENED_SHIFT) | (deadline << _DEADLINE_SHIFT);
        emit Opened(
            id,
            terms.renter,
            terms.provider,
            terms.token,
            amount,
            terms.pricePerSecond,
            terms.maxSeconds,
            window,
            terms.receiptSigner,
            terms.agreementId
        );
        return id;
    }

    /// @dev Pays out a closing rental: the provider gets newPaid - paid more, the renter the rest.
    function _close(Terms calldata terms, bytes32 id, uint256 word, uint256 paid, uint256 newPaid, uint64 uptime)
        private
    {
        uint256 amount = word & _AMOUNT_MASK;
        _rentals[id] = (word & ~(_AMOUNT_MASK << _PAID_SHIFT)) | (newPaid << _PAID_SHIFT) | _CLOSED;
        unchecked {
            // paid <= newPaid <= deposit: payable is capped by the deposit.
            if (newPaid != paid) _balances[terms.token][terms.provider] += newPaid - paid;
            if (amount != newPaid) _balances[terms.token][terms.renter] += amount - newPaid;
        }
        emit Settled(id, newPaid, amount - newPaid, uptime, msg.sender);
    }

    /// @dev Validates a receipt for an open rental and returns min(receipt.amount, deposit).
    function _checkReceipt(
        Terms calldata terms,
        bytes32 id,
        uint256 word,
        Receipt calldata receipt,
        bytes calldata signature
    ) private view returns (uint256) {
        _requireBeforeDeadline(word);
        if (receipt.rentalId != id) revert WrongRental(id, receipt.rentalId);
        bytes32 digest = _hashTypedDataV4(_hashReceipt(receipt));
        if (_recover(digest, signature) != terms.receiptSigner) revert InvalidSignature();
        uint256 amount = receipt.amount;
        uint64 uptime = receipt.uptimeSeconds;
        uint256 price = terms.pricePerSecond;
        // price * uptime may exceed 2^256; then no amount can exceed it.
        if (uptime != 0 ? price <= type(uint256).max / uptime : true) {
            uint256 maxAmount = price * uptime;
            if (amount > maxAmount) revert AmountExceedsPrice(amount, maxAmount);
        }
        uint256 elapsed = block.timestamp - ((word >> _OPENED_SHIFT) & _TIME_MASK);
        if (uptime > elapsed) revert UptimeExceedsElapsed(uptime, elapsed);
        uint256 deposit_ = word & _AMOUNT_MASK;
        return amount < deposit_ ? amount : deposit_;
    }

    function _requireOpen(bytes32 id) private view returns (uint256 word) {
        word = _rentals[id];
        if (word == 0) revert UnknownRental(id);
        if (word & _CLOSED != 0) revert RentalClosed(id);
    }

    function _requireBeforeDeadline(uint256 word) private view returns (uint256 deadline) {
        deadline = (word >> _DEADLINE_SHIFT) & _TIME_MASK;
        if (block.timestamp > deadline) revert DeadlinePassed(deadline);
    }

    function _debit(address token, address account, uint256 amount) private {
        uint256 available = _balances[token][account];
        if (available < amount) revert InsufficientBalance(token, account, amount, available);
        unchecked {
            _balances[token][account] = available - amount;
        }
    }

    /// @dev Pulls exactly `amount` or reverts: the credit must equal what the contract received.
    function _pull(address token, address from, uint256 amount) private {
        uint256 before = IERC20(token).balanceOf(address(this));
        IERC20(token).safeTransferFrom(from, address(this), amount);
        uint256 received = IERC20(token).balanceOf(address(this)) - before;
        if (received != amount) revert FeeOnTransferNotSupported(token, amount, received);
    }

    /// @dev OZ ECDSA on a 65-byte r||s||v signature: rejects other lengths, high s, bad v and
    /// unrecoverable signatures, all as InvalidSignature.
    function _recover(bytes32 digest, bytes calldata signature) private pure returns (address signer) {
        if (signature.length != 65) revert InvalidSignature();
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly ("memory-safe") {
            r := calldataload(signature.offset)
            s := calldataload(add(signature.offset, 0x20))
            v := byte(0, calldataload(add(signature.offset, 0x40)))
        }
        ECDSA.RecoverError err;
        (signer, err,) = ECDSA.tryRecover(digest, v, r, s);
        if (err != ECDSA.RecoverError.NoError) revert InvalidSignature();
    }

    /// @dev keccak256(abi.encode(TERMS_TYPEHASH, terms)) without the ABI re-encoding: Terms is
    /// nine static words laid out in calldata exactly as abi.encode lays them out.
    function _hashTerms(Terms calldata terms) private pure returns (bytes32 h) {
        bytes32 typehash = TERMS_TYPEHASH;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, typehash)
            calldatacopy(add(ptr, 0x20), terms, 0x120)
            h := keccak256(ptr, 0x140)
        }
    }

    /// @dev keccak256(abi.encode(RECEIPT_TYPEHASH, receipt)), same technique as _hashTerms.
    function _hashReceipt(Receipt calldata receipt) private pure returns (bytes32 h) {
        bytes32 typehash = RECEIPT_TYPEHASH;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, typehash)
            calldatacopy(add(ptr, 0x20), receipt, 0xa0)
            h := keccak256(ptr, 0xc0)
        }
    }
}
