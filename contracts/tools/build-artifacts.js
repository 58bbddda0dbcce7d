#!/usr/bin/env node
// Compiles the escrow and the test tokens with solcjs (standard JSON, the same settings as
// foundry.toml) and writes one artifact per contract for the Python node:
//   {"abi", "bytecode", "compiler", "contractName", "deployedBytecode", "source"}
// Output is deterministic (sorted keys, relative source paths, fixed settings), so
// tests/contracts/test_artifact.py can rebuild into a temporary folder and compare bytes.
//
// Usage: node tools/build-artifacts.js [--out DIR]   (default: ../node/rigmesh/escrow/artifacts)
'use strict';

const fs = require('fs');
const path = require('path');
const solc = require('solc');

const ROOT = path.resolve(__dirname, '..');
const DEFAULT_OUT = path.resolve(ROOT, '..', 'node', 'rigmesh', 'escrow', 'artifacts');

// Keep in step with foundry.toml ([profile.default]); test_artifact.py checks that they agree.
const SETTINGS = {
  evmVersion: 'prague',
  optimizer: { enabled: true, runs: 10000 },
  viaIR: false,
};

// Source path (relative to contracts/) -> contract names to export.
const TARGETS = {
  'src/RentalEscrow.sol': ['RentalEscrow'],
  'src/test-tokens/TestStablecoin.sol': ['TestStablecoin'],
  'src/test-tokens/FeeOnTransferToken.sol': ['FeeOnTransferToken'],
  'src/test-tokens/ReentrantToken.sol': ['ReentrantToken'],
};

const REMAPPINGS = [['@openzeppelin/contracts/', 'node_modules/@openzeppelin/contracts/']];

function resolveImport(importPath) {
  let rel = importPath;
  for (const [prefix, target] of REMAPPINGS) {
    if (rel.startsWith(prefix)) rel = target + rel.slice(prefix.length);
  }
  const file = path.resolve(ROOT, rel);
  if (!file.startsWith(ROOT + path.sep)) return { error: `import outside contracts/: ${importPath}` };
  try {
    return { contents: fs.readFileSync(file, 'utf8') };
  } catch (_) {
    return { error: `not found: ${importPath} (did you run npm ci in contracts/?)` };
  }
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === 'object') {
    const out = {};
    for (const key of Object.keys(value).sort()) out[key] = sortKeys(value[key]);
    return out;
  }
  return value;
}

function main() {
  const args = process.argv.slice(2);
  const outIdx = args.indexOf('--out');
  const outDir = outIdx >= 0 ? path.resolve(args[outIdx + 1]) : DEFAULT_OUT;

  const sources = {};
  for (const src of Object.keys(TARGETS)) {
    sources[src] = { content: fs.readFileSync(path.join(ROOT, src), 'utf8') };
  }
  const input = {
    language: 'Solidity',
    sources,
    settings: {
      ...SETTINGS,
      remappings: REMAPPINGS.map(([a, b]) => `${a}=${b}`),
      outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: resolveImport }));
  const errors = (output.errors || []).filter((e) => e.severity === 'error');
  for (const e of output.errors || []) process.stderr.write(`${e.formattedMessage}\n`);
  if (errors.length) return 1;

  fs.mkdirSync(outDir, { recursive: true });
  const compiler = { version: solc.version(), ...SETTINGS };
  for (const [src, names] of Object.entries(TARGETS)) {
    for (const name of names) {
      const c = output.contracts[src][name];
      const artifact = sortKeys({
        contractName: name,
        source: `contracts/${src}`,
        abi: c.abi,
        bytecode: `0x${c.evm.bytecode.object}`,
        deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
        compiler,
      });
      fs.writeFileSync(path.join(outDir, `${name}.json`), `${JSON.stringify(artifact, null, 2)}\n`);
    }
  }
  return 0;
}

process.exitCode = main();
