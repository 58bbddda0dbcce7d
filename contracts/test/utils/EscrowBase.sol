// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {EscrowDeployer} from "./EscrowDeployer.sol";
import {IRentalEscrow} from "../../src/IRentalEscrow.sol";
import {RentalEscrow} from "../../src/RentalEscrow.sol";
import {TestStablecoin} from "../../src/test-tokens/TestStablecoin.sol";

/// @notice Shared fixture: an escrow, a stablecoin, funded renter, and helpers that build terms
/// and EIP-712 signatures. Type hashes and the domain are recomputed here from their strings, not
/// read from the contract, so a wrong constant in the contract fails the tests.
abstract contract EscrowBase is EscrowDeployer {
    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 internal constant TERMS_TYPEHASH = keccak256(
        "Terms(address renter,address provider,address token,uint256 deposit,uint256 pricePerSecond,"
        "uint64 maxSeconds,uint64 challengeWindow,address receiptSigner,bytes32 agreementId)"
    );
    bytes32 internal constant RECEIPT_TYPEHASH =
        keccak256("Receipt(bytes32 rentalId,uint64 seq,uint64 uptimeSeconds,uint256 amount,bytes32 evidence)");
    bytes32 internal constant OPEN_REQUEST_TYPEHASH = keccak256(
        "OpenRequest(Terms terms,uint256 nonce,uint256 deadline)"
        "Terms(address renter,address provider,address token,uint256 deposit,uint256 pricePerSecond,"
        "uint64 maxSeconds,uint64 challengeWindow,address receiptSigner,bytes32 agreementId)"
    );

    address internal constant ETH = address(0);
    uint64 internal constant MIN_WINDOW = 60;
    uint64 internal constant MAX_WINDOW = 7 days;
    uint64 internal constant WINDOW = 600;
    uint64 internal constant MAX_SECONDS = 3600;
    uint256 internal constant PRICE = 1e12; // wei per second
    uint256 internal constant DEPOSIT = 1e15; // 1,000 seconds at PRICE: the deposit cap is reachable
    uint256 internal constant START = 1_700_000_000;

    RentalEscrow internal escrow;
    TestStablecoin internal usd;

    uint256 internal constant RENTER_KEY = 0xA11CE;
    uint256 internal constant PROVIDER_KEY = 0xB0B;
    uint256 internal constant SIGNER_KEY = 0x5167;
    address internal renter;
    address internal provider;
    address internal signer;

    function setUp() public virtual {
        vm.warp(START);
        escrow = _deployEscrow(MIN_WINDOW, MAX_WINDOW);
        usd = new TestStablecoin();
        renter = vm.addr(RENTER_KEY);
        provider = vm.addr(PROVIDER_KEY);
        signer = vm.addr(SIGNER_KEY);
        vm.label(renter, "renter");
        vm.label(provider, "provider");
        vm.label(signer, "receiptSigner");
        vm.label(address(escrow), "escrow");

        vm.deal(renter, 1000 ether);
        vm.prank(renter);
        escrow.deposit{value: 100 ether}(ETH, 100 ether);
        usd.mint(renter, 1e15);
        vm.prank(renter);
        usd.approve(address(escrow), type(uint256).max);
        vm.prank(renter);
        escrow.deposit(address(usd), 1e14);
    }

    function _terms(address token, uint256 amount) internal view returns (IRentalEscrow.Terms memory) {
        return IRentalEscrow.Terms({
            renter: renter,
            provider: provider,
            token: token,
            deposit: amount,
            pricePerSecond: PRICE,
            maxSeconds: MAX_SECONDS,
            challengeWindow: WINDOW,
            receiptSigner: signer,
            agreementId: keccak256("agreement")
        });
    }

    function _ethTerms() internal view returns (IRentalEscrow.Terms memory) {
        return _terms(ETH, DEPOSIT);
    }

    function _termsHash(IRentalEscrow.Terms memory t) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                TERMS_TYPEHASH,
                t.renter,
                t.provider,
                t.token,
                t.deposit,
                t.pricePerSecond,
                t.maxSeconds,
                t.challengeWindow,
                t.receiptSigner,
                t.agreementId
            )
        );
    }

    function _open(IRentalEscrow.Terms memory t) internal returns (bytes32 id) {
        vm.prank(t.renter);
        id = escrow.open(t);
    }

    function _domain(address verifying, uint256 chainId) internal pure returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, keccak256("Rigmesh Escrow"), keccak256("1"), chainId, verifying));
    }

    function _digest(bytes32 domain, bytes32 structHash) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked("\x19\x01", domain, structHash));
    }

    function _receiptHash(IRentalEscrow.Receipt memory r) internal pure returns (bytes32) {
        return keccak256(abi.encode(RECEIPT_TYPEHASH, r.rentalId, r.seq, r.uptimeSeconds, r.amount, r.evidence));
    }

    function _sign(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    function _receipt(bytes32 id, uint64 seq, uint64 uptime, uint256 amount)
        internal
        pure
        returns (IRentalEscrow.Receipt memory)
    {
        return IRentalEscrow.Receipt({
            rentalId: id, seq: seq, uptimeSeconds: uptime, amount: amount, evidence: keccak256(abi.encode(seq))
        });
    }

    /// @dev A receipt signed by `key` under this escrow's domain on the current chain.
    function _signReceipt(uint256 key, IRentalEscrow.Receipt memory r) internal view returns (bytes memory) {
        return _sign(key, _digest(_domain(address(escrow), block.chainid), _receiptHash(r)));
    }

    function _openRequestSig(uint256 key, IRentalEscrow.Terms memory t, uint256 nonce, uint256 deadline)
        internal
        view
        returns (bytes memory)
    {
        bytes32 structHash = keccak256(abi.encode(OPEN_REQUEST_TYPEHASH, _termsHash(t), nonce, deadline));
        return _sign(key, _digest(_domain(address(escrow), block.chainid), structHash));
    }

    function _state(bytes32 id)
        internal
        view
        returns (IRentalEscrow.Status status, uint256 dep, uint256 paid, uint64 openedAt, uint64 deadline)
    {
        return escrow.rentalState(id);
    }

    function _paid(bytes32 id) internal view returns (uint256 paid) {
        (,, paid,,) = escrow.rentalState(id);
    }

    function _status(bytes32 id) internal view returns (IRentalEscrow.Status status) {
        (status,,,,) = escrow.rentalState(id);
    }

    function _deadline(bytes32 id) internal view returns (uint64 deadline) {
        (,,,, deadline) = escrow.rentalState(id);
    }
}
