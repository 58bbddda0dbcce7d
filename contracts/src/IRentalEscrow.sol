// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

/// @title Rigmesh rental escrow: the external interface (part of the protocol, see spec/escrow.md)
/// @notice One deployment serves every rental on a chain. No owner, no admin, no upgrade, no pause.
/// Amounts are token base units (wei for native ETH, token address 0); prices are per second.
/// Payouts credit free balances (pull model); `withdraw` moves them out.
interface IRentalEscrow {
    /// @notice What the renter locks. The rental id is this struct's EIP-712 hash
    /// (Terms(address renter,address provider,address token,uint256 deposit,uint256 pricePerSecond,
    /// uint64 maxSeconds,uint64 challengeWindow,address receiptSigner,bytes32 agreementId)).
    struct Terms {
        address renter;
        address provider;
        address token;
        uint256 deposit;
        uint256 pricePerSecond;
        uint64 maxSeconds;
        uint64 challengeWindow;
        address receiptSigner;
        bytes32 agreementId;
    }

    /// @notice The renter's cumulative usage statement, EIP-712 signed by the terms' receiptSigner
    /// (Receipt(bytes32 rentalId,uint64 seq,uint64 uptimeSeconds,uint256 amount,bytes32 evidence)).
    struct Receipt {
        bytes32 rentalId;
        uint64 seq;
        uint64 uptimeSeconds;
        uint256 amount;
        bytes32 evidence;
    }

    enum Status {
        None,
        Open,
        Closed
    }

    event Deposited(address indexed token, address indexed account, uint256 amount);
    event Withdrawn(address indexed token, address indexed account, address to, uint256 amount);
    event Opened(
        bytes32 indexed rentalId,
        address indexed renter,
        address indexed provider,
        address token,
        uint256 deposit,
        uint256 pricePerSecond,
        uint64 maxSeconds,
        uint64 challengeWindow,
        address receiptSigner,
        bytes32 agreementId
    );
    event ToppedUp(bytes32 indexed rentalId, uint256 amount, uint256 deposit);
    event Claimed(bytes32 indexed rentalId, uint64 seq, uint64 uptimeSeconds, uint256 amount, uint256 paid);
    event CloseRequested(bytes32 indexed rentalId, uint64 deadline);
    /// @param toProvider everything the provider was paid over the rental's life
    /// @param toRenter what returned to the renter's free balance at close
    event Settled(
        bytes32 indexed rentalId, uint256 toProvider, uint256 toRenter, uint64 uptimeSeconds, address closedBy
    );

    error ZeroAmount();
    error WrongMsgValue(uint256 expected, uint256 actual);
    error FeeOnTransferNotSupported(address token, uint256 expected, uint256 received);
    error InsufficientBalance(address token, address account, uint256 needed, uint256 available);
    error EthTransferFailed(address to, uint256 amount);
    /// @notice `withdraw` to address(0) (ETH would be burned) or to the escrow itself (the funds
    /// would be held for nobody): refused for every token.
    error InvalidRecipient(address to);
    error AmountTooLarge(uint256 amount);
    error InvalidTerms();
    error ChallengeWindowOutOfBounds(uint64 challengeWindow, uint64 min, uint64 max);
    error RentalExists(bytes32 rentalId);
    error UnknownRental(bytes32 rentalId);
    error RentalClosed(bytes32 rentalId);
    error NotRenter(address caller);
    error NotProvider(address caller);
    error WrongRental(bytes32 expected, bytes32 actual);
    error InvalidSignature();
    error AmountExceedsPrice(uint256 amount, uint256 maxAmount);
    error UptimeExceedsElapsed(uint64 uptimeSeconds, uint256 elapsed);
    error NothingToClaim(uint256 payable_, uint256 paid);
    error DeadlinePassed(uint256 deadline);
    error DeadlineNotReached(uint256 deadline);
    error CloseAlreadyRequested(bytes32 rentalId);
    error SignatureExpired(uint256 deadline);
    error BadNonce(uint256 expected, uint256 actual);

    /// @notice Add to the caller's free balance. For ETH (token 0) send exactly `amount` as value;
    /// for an ERC-20 send no value and approve first. Fee-on-transfer tokens revert.
    function deposit(address token, uint256 amount) external payable;

    /// @notice EIP-2612 permit then deposit for `owner`; anyone may submit it (gasless renters).
    /// The permit must succeed, unless the owner itself calls with enough allowance.
    function depositWithPermit(
        address owner,
        address token,
        uint256 amount,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external;

    /// @notice Move `amount` of the caller's free balance to `to` (not address(0), not the escrow).
    function withdraw(address token, uint256 amount, address to) external;

    /// @notice Free (unlocked) balance of `account` in `token`.
    function balanceOf(address token, address account) external view returns (uint256);

    /// @notice The renter (msg.sender == terms.renter) locks terms.deposit from its free balance.
    function open(Terms calldata terms) external returns (bytes32 rentalId);

    /// @notice Anyone opens for a renter who EIP-712 signed
    /// OpenRequest(Terms terms,uint256 nonce,uint256 deadline); nonce must equal nonces(renter).
    function openFor(Terms calldata terms, uint256 nonce, uint256 deadline, bytes calldata signature)
        external
        returns (bytes32 rentalId);

    /// @notice The renter adds `amount` from its free balance to an open rental's deposit.
    function topUp(Terms calldata terms, uint256 amount) external;

    /// @notice The provider takes what `receipt` adds over what was already paid; stays open.
    function claim(Terms calldata terms, Receipt calldata receipt, bytes calldata signature) external;

    /// @notice The provider closes with its best receipt (empty signature: with what it has
    /// claimed so far); the rest of the deposit returns to the renter at once.
    function settle(Terms calldata terms, Receipt calldata receipt, bytes calldata signature) external;

    /// @notice The renter starts the challenge window (once; it never extends the hard deadline).
    function requestClose(Terms calldata terms) external;

    /// @notice Anyone, after the rental's deadline: the provider keeps what it claimed, the rest
    /// returns to the renter.
    function finalize(Terms calldata terms) external;

    /// @notice A rental's state. deadline = closeRequestedAt + challengeWindow once close was
    /// requested (capped at the hard deadline), else openedAt + maxSeconds + challengeWindow.
    function rentalState(bytes32 rentalId)
        external
        view
        returns (Status status, uint256 deposit, uint256 paid, uint64 openedAt, uint64 deadline);

    /// @notice Next openFor nonce of `renter`.
    function nonces(address renter) external view returns (uint256);

    /// @notice The EIP-712 hash of `terms`, which is the rental id.
    function rentalId(Terms calldata terms) external pure returns (bytes32);
}
