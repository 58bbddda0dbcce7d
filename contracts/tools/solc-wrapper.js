#!/usr/bin/env node
// A `solc` look-alike for forge, backed by the npm `solc` package (solcjs, WebAssembly).
// Why: forge normally downloads a native solc, and this machine (and CI) cannot reach the
// download host. forge only needs two things from a compiler binary: `--version`, and
// `--standard-json` reading the input from stdin. Imports that forge did not inline are
// resolved from --base-path, --include-path and --allow-paths, like native solc does.
'use strict';

const fs = require('fs');
const path = require('path');
const solc = require('solc');

function parseArgs(argv) {
  const opts = { version: false, standardJson: false, roots: [] };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    const [flag, inline] = arg.includes('=') ? arg.split(/=(.*)/s, 2) : [arg, undefined];
    const value = () => (inline !== undefined ? inline : argv[++i]);
    switch (flag) {
      case '--version':
      case '-v':
        opts.version = true;
        break;
      case '--standard-json':
        opts.standardJson = true;
        break;
      case '--base-path':
      case '--include-path':
        opts.roots.push(value());
        break;
      case '--allow-paths':
        for (const p of value().split(',')) if (p) opts.roots.push(p);
        break;
      default:
        // Other flags (e.g. --no-import-callback) do not change a standard-json compile here.
        break;
    }
  }
  return opts;
}

function makeImportCallback(roots) {
  const bases = [process.cwd(), ...roots].map((r) => path.resolve(r));
  return (importPath) => {
    const candidates = path.isAbsolute(importPath)
      ? [importPath]
      : bases.map((base) => path.join(base, importPath));
    for (const file of candidates) {
      try {
        return { contents: fs.readFileSync(file, 'utf8') };
      } catch (_) {
        // try the next root
      }
    }
    return { error: `File not found in ${bases.join(', ')}: ${importPath}` };
  };
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.version) {
    // The same two lines native solc prints; forge parses the version from "Version: ...".
    process.stdout.write(
      `solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`,
    );
    return 0;
  }
  if (!opts.standardJson) {
    process.stderr.write('solc-wrapper: only --version and --standard-json are supported\n');
    return 1;
  }
  const input = fs.readFileSync(0, 'utf8');
  const output = solc.compile(input, { import: makeImportCallback(opts.roots) });
  process.stdout.write(output);
  return 0;
}

process.exitCode = main();
