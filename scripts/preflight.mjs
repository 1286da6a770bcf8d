#!/usr/bin/env node
// Before the tests: is the native part built, and may this machine use userfaultfd? Says what to do
// when not, instead of letting every end-to-end test fail on its own.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createRequire } from 'node:module';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const require = createRequire(import.meta.url);
const fail = (msg) => {
  console.error(`faultline preflight: ${msg}`);
  process.exit(1);
};
if (!fs.existsSync(path.join(root, 'build/Release/faultline_native.node'))) fail('the native addon is not built: run `npm ci` (or `npm run build`)');
if (!fs.existsSync(path.join(root, 'native/bin/faultline-target'))) fail('native/bin/faultline-target is not built: run `npm run build`');
if (!fs.existsSync(path.join(root, 'dist/src/cli/main.js'))) fail('TypeScript is not compiled: run `npx tsc -p .`');
const { checkUffdAvailable } = require(path.join(root, 'dist/src/cli/preflight.js'));
try {
  checkUffdAvailable();
} catch (e) {
  fail(`${e.message}. The end-to-end tests restore real processes with real userfaultfd and cannot run without it.`);
}
