// Builds keyword.js into a WASI-free component: node build.mjs OUT.wasm
// Calls the componentize-js API directly: the `jco componentize` CLI of jco 1.35.0 fails here
// ("failed to get path metadata"), see docs/plugin-guide.md.

import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { componentize } from '@bytecodealliance/componentize-js';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] ?? join(here, 'js-keyword.wasm');
const { component } = await componentize({
  sourcePath: join(here, 'keyword.js'),
  witPath: join(here, '..', '..', 'wit'),
  worldName: 'policy',
  // No WASI imports at all: log through the host's `log` import (console.log needs stdio).
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
await writeFile(out, component);
