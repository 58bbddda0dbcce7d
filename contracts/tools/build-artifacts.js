#!/usr/bin/env node
// Compiles the escrow and the test tokens with solcjs (standard JSON) and writes one artifact per contract for the Python node:
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

// Two compiles, each with its own settings, recorded in every artifact's "compiler" field.
// The escrow goes through via-IR with many optimizer runs: it is deployed once and called for
// every rental, so runtime gas matters and deployment size does not (it saves about 1,200 gas
// on claim and open over the legacy pipeline). The test tokens take the fast default pipeline.
// forge does not compile the escrow that its tests run: they deploy this artifact.
const GROUPS = [
  {
    settings: { evmVersion: 'prague', optimizer: { enabled: true, runs: 1000000 }, viaIR: true },
    targets: { 'src/RentalEscrow.sol': ['RentalEscrow'] },
  },
  {
    settings: { evmVersion: 'prague', optimizer: { enabled: true, runs: 200 }, viaIR: false },
    targets: {
      'src/test-tokens/TestStablecoin.sol': ['TestStablecoin'],
      'src/test-tokens/FeeOnTransferToken.sol': ['FeeOnTransferToken'],
      'src/test-tokens/ReentrantToken.sol': ['ReentrantToken'],
    },
  },
];

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

function compileGroup({ settings, targets }, outDir) {
  const sources = {};
  for (const src of Object.keys(targets)) {
    sources[src] = { content: fs.readFileSync(path.join(ROOT, src), 'utf8') };
  }
  const input = {
    language: 'Solidity',
    sources,
    settings: {
      ...settings,
      remappings: REMAPPINGS.map(([a, b]) => `${a}=${b}`),
      outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: resolveImport }));
  const errors = (output.errors || []).filter((e) => e.severity === 'error');
  for (const e of errors) process.stderr.write(`${e.formattedMessage}\n`);
  if (errors.length) return false;

  const compiler = { version: solc.version(), ...settings };
  for (const [src, names] of Object.entries(targets)) {
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
  return true;
}

function main() {
  const args = process.argv.slice(2);
  const outIdx = args.indexOf('--out');
  const outDir = outIdx >= 0 ? path.resolve(args[outIdx + 1]) : DEFAULT_OUT;
  fs.mkdirSync(outDir, { recursive: true });
  for (const group of GROUPS) {
    if (!compileGroup(group, outDir)) return 1;
  }
  return 0;
}

process.exitCode = main();
