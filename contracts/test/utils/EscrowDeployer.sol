// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Test} from "./Test.sol";
import {RentalEscrow} from "../../src/RentalEscrow.sol";

/// @notice Deploys the escrow from the committed artifact rather than from this compile, so the
/// tests run the exact bytecode the Python node deploys (tests/contracts/test_artifact.py proves
/// that artifact is a fresh compile of src/).
abstract contract EscrowDeployer is Test {
    string internal constant ARTIFACT = "/../node/rigmesh/escrow/artifacts/RentalEscrow.json";

    function _escrowCreationCode(uint64 minWindow, uint64 maxWindow) internal view returns (bytes memory) {
        string memory json = vm.readFile(string.concat(vm.projectRoot(), ARTIFACT));
        return bytes.concat(vm.parseJsonBytes(json, ".bytecode"), abi.encode(minWindow, maxWindow));
    }

    /// @dev Returns address(0) if the constructor reverted (tests of constructor checks use that).
    function _create(bytes memory code) internal returns (address deployed) {
        assembly ("memory-safe") {
            deployed := create(0, add(code, 0x20), mload(code))
        }
    }

    function _deployEscrow(uint64 minWindow, uint64 maxWindow) internal returns (RentalEscrow escrow) {
        escrow = RentalEscrow(_create(_escrowCreationCode(minWindow, maxWindow)));
        require(address(escrow).code.length != 0, "escrow artifact did not deploy");
    }
}
