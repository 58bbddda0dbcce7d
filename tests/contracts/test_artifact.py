"""The committed escrow artifacts are a fresh compile of contracts/src, and they say what we expect.

The Python node deploys node/rigmesh/escrow/artifacts/*.json and forge tests deploy the same
RentalEscrow.json, so a source edit without a rebuild would leave both testing stale bytecode.
Rebuild with `cd contracts && node tools/build-artifacts.js`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from eth_hash.auto import keccak
from web3 import EthereumTesterProvider, Web3

from rigmesh.wire import eip712

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "contracts"
ARTIFACTS = ROOT / "node" / "rigmesh" / "escrow" / "artifacts"
EXPECTED = {"RentalEscrow", "TestStablecoin", "FeeOnTransferToken", "ReentrantToken"}

needs_toolchain = pytest.mark.skipif(
    shutil.which("node") is None or not (CONTRACTS / "node_modules" / "solc").is_dir(),
    reason="contracts/node_modules is missing: run `cd contracts && npm ci` (make setup does)",
)


def _differs(a: Path, b: Path) -> bool:
    return a.read_bytes() != b.read_bytes()


def load(name: str) -> dict[str, Any]:
    return json.loads((ARTIFACTS / f"{name}.json").read_text())


@needs_toolchain
@pytest.mark.timeout(900)  # ~15 s on an idle 2-core machine; solcjs via-IR slows a lot under load
def test_committed_artifacts_equal_a_fresh_compile(tmp_path: Path) -> None:
    subprocess.run(
        ["node", "tools/build-artifacts.js", "--out", str(tmp_path)],
        cwd=CONTRACTS,
        check=True,
        capture_output=True,
        timeout=840,
    )
    fresh = {p.name for p in tmp_path.glob("*.json")}
    assert fresh == {f"{n}.json" for n in EXPECTED}
    assert {p.name for p in ARTIFACTS.glob("*.json")} == fresh
    stale = [n for n in sorted(fresh) if _differs(tmp_path / n, ARTIFACTS / n)]
    assert not stale, f"stale {stale}: run `cd contracts && node tools/build-artifacts.js`"


def test_artifacts_are_for_the_pinned_compiler_and_prague() -> None:
    package = json.loads((CONTRACTS / "package.json").read_text())
    solc_version = package["devDependencies"]["solc"]
    foundry = tomllib.loads((CONTRACTS / "foundry.toml").read_text())["profile"]["default"]
    assert foundry["evm_version"] == "prague"
    for name in EXPECTED:
        art = load(name)
        assert art["contractName"] == name
        assert art["compiler"]["version"].startswith(solc_version + "+")
        assert art["compiler"]["evmVersion"] == "prague"  # py-evm runs prague, not osaka
        assert art["compiler"]["optimizer"]["enabled"] is True
        assert re.fullmatch(r"0x[0-9a-f]+", art["bytecode"])
        assert re.fullmatch(r"0x[0-9a-f]+", art["deployedBytecode"])
        # EIP-170: a contract's runtime code is at most 24,576 bytes
        assert len(art["deployedBytecode"]) // 2 - 1 <= 24_576


def test_abi_has_every_member_of_the_interface() -> None:
    source = (CONTRACTS / "src" / "IRentalEscrow.sol").read_text()
    abi = load("RentalEscrow")["abi"]
    have = {(e["type"], e.get("name")) for e in abi}
    for kind in ("function", "event", "error"):
        for name in re.findall(rf"^\s*{kind} (\w+)\(", source, flags=re.M):
            assert (kind, name) in have, f"{kind} {name} of IRentalEscrow missing from the artifact"


def test_fuzz_and_invariant_settings() -> None:
    config = tomllib.loads((CONTRACTS / "foundry.toml").read_text())
    assert config["fuzz"]["runs"] >= 5000
    assert config["invariant"]["runs"] * config["invariant"]["depth"] >= 4096
    assert config["profile"]["default"]["offline"] is True


@needs_toolchain
def test_solc_wrapper_answers_like_solc() -> None:
    out = subprocess.run(
        [str(CONTRACTS / "tools" / "solc-wrapper.js"), "--version"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert out.splitlines()[-1].startswith("Version: 0.8.")


def test_deployed_escrow_hashes_agree_with_wire_eip712() -> None:
    """Type hashes, rental id and domain separator of the artifact equal rigmesh.wire.eip712's."""
    w3 = Web3(EthereumTesterProvider())
    art = load("RentalEscrow")
    sender = w3.eth.accounts[0]
    tx = (
        w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        .constructor(60, 3600)
        .transact({"from": sender})
    )
    address = w3.eth.get_transaction_receipt(tx).contractAddress
    escrow = w3.eth.contract(address=address, abi=art["abi"]).functions
    assert escrow.TERMS_TYPEHASH().call() == eip712.TERMS_TYPEHASH
    assert escrow.RECEIPT_TYPEHASH().call() == eip712.RECEIPT_TYPEHASH
    assert escrow.OPEN_REQUEST_TYPEHASH().call() == eip712.OPEN_REQUEST_TYPEHASH
    assert escrow.domainSeparator().call() == eip712.escrow_domain_separator(
        w3.eth.chain_id, bytes.fromhex(address[2:])
    )
    terms = eip712.Terms(
        renter=b"\x01" * 20,
        provider=b"\x02" * 20,
        token=bytes(20),
        deposit=10**18,
        price_per_second=7,
        max_seconds=3600,
        challenge_window=600,
        receipt_signer=b"\x03" * 20,
        agreement_id=keccak(b"agreement"),
    )
    abi_terms = tuple(
        Web3.to_checksum_address(v) if isinstance(v, bytes) and len(v) == 20 else v
        for v in terms.as_abi_tuple()
    )
    assert escrow.rentalId(abi_terms).call() == terms.rental_id
    assert escrow.MAX_AMOUNT().call() == 2**87 - 1
    assert escrow.MAX_TIMESTAMP().call() == 2**40 - 1
