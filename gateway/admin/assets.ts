import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AdminAsset } from './server.js';

const TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.map': 'application/json; charset=utf-8',
};

/** The built dashboard: `dist/dashboard` beside the compiled gateway, or below the checkout when run from source. */
export function findDashboard(): string | undefined {
  for (const rel of ['../../dist/dashboard/', '../../dashboard/']) {
    const dir = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(join(dir, 'index.html')) && existsSync(join(dir, 'assets', 'app.js'))) return dir;
  }
  return undefined;
}

/**
 * Reads the dashboard's files once, at start, and serves them by path: `index.html` at `/`, the
 * rest under `/assets/`. The files are code, not data; everything they show comes from `/api/`
 * with the person's admin token. Without a build, `/` explains how to make one.
 */
export function dashboardAssets(dir: string | undefined): (path: string) => AdminAsset | undefined {
  const files = new Map<string, AdminAsset>();
  if (dir === undefined) {
    const body = Buffer.from('The Valet dashboard is not built. Run `npm run build` (npm install does it) and restart the gateway.\n');
    files.set('/', { status: 503, contentType: 'text/plain; charset=utf-8', body });
    return (path) => files.get(path);
  }
  files.set('/', { contentType: TYPES['.html'] as string, body: readFileSync(join(dir, 'index.html')) });
  const assets = join(dir, 'assets');
  for (const name of readdirSync(assets)) {
    const type = TYPES[extname(name)];
    if (type !== undefined) files.set(`/assets/${name}`, { contentType: type, body: readFileSync(join(assets, name)) });
  }
  return (path) => files.get(path);
}
