// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title A token that calls back into a target during transfers (tests: reentrancy must fail)
/// @notice Anyone may mint and arm it. When armed, the next transfer (or transferFrom) first
/// makes one call to `target` with `payload`, then disarms; if that call reverts, the transfer
/// reverts with the same data, so tests see the escrow's own error.
contract ReentrantToken is ERC20 {
    /// @notice Contract the next transfer calls into.
    address public target;
    /// @notice Calldata of that call.
    bytes public payload;
    /// @notice Whether the next transfer makes the call (cleared when it does).
    bool public armed;

    constructor() ERC20("Reentrant", "REE") {}

    /// @notice Mint `amount` to `to` (open to anyone: test token).
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Make the next transfer call `target_` with `payload_` before moving tokens.
    function arm(address target_, bytes calldata payload_) external {
        target = target_;
        payload = payload_;
        armed = true;
    }

    function _update(address from, address to, uint256 value) internal override {
        if (armed && from != address(0) && to != address(0)) {
            armed = false;
            (bool ok, bytes memory reason) = target.call(payload);
            if (!ok) {
                assembly ("memory-safe") {
                    revert(add(reason, 0x20), mload(reason))
                }
            }
        }
        super._update(from, to, value);
    }
}
