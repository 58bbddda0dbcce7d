// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// @title Test stablecoin for devnets and tests (6 decimals, EIP-2612 permit)
/// @notice Anyone may mint: this token is worthless by design. Never deploy it as real money.
contract TestStablecoin is ERC20, ERC20Permit {
    constructor() ERC20("Rigmesh Test USD", "tUSD") ERC20Permit("Rigmesh Test USD") {}

    /// @notice USDC-like precision, so amounts in tests look like the real thing.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @notice Mint `amount` base units to `to` (open to anyone: devnet faucet).
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
