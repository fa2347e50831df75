#!/usr/bin/env node
// Builds the admin dashboard into dist/dashboard: index.html at the top, the bundle, stylesheet and
// icon under assets/. esbuild bundles the TypeScript (dashboard/src) into one ES module; nothing is
// loaded from a CDN at run time. Files are written to a temporary name and renamed, so a gateway
// (or a test) reading them while another build runs never sees half a file.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'dashboard');
const out = join(root, 'dist', 'dashboard');
mkdirSync(join(out, 'assets'), { recursive: true });

const put = (name, contents) => {
  const file = join(out, name);
  const tmp = `${file}.${process.pid}.tmp`;
  if (typeof contents === 'string' || contents instanceof Uint8Array) writeFileSync(tmp, contents);
  else copyFileSync(contents.copy, tmp);
  renameSync(tmp, file);
};

const result = await build({
  entryPoints: { app: join(src, 'src', 'main.ts'), 'app-style': join(src, 'style.css') },
  bundle: true,
  format: 'esm',
  target: ['chrome110', 'firefox115', 'safari16'],
  minify: true,
  legalComments: 'none',
  write: false,
  outdir: join(out, 'assets'),
  logLevel: 'warning',
});
for (const f of result.outputFiles) {
  const name = f.path.endsWith('.css') ? 'app.css' : 'app.js';
  put(join('assets', name), f.contents);
}
put(join('assets', 'favicon.svg'), { copy: join(src, 'favicon.svg') });
put('index.html', { copy: join(src, 'index.html') });
console.log(`dashboard built: ${out}`);
