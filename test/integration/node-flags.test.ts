import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { missingNodeFlags, NODE_FLAGS } from '../../gateway/node-flags.js';
import { CLI, listeningPort, SHEBANG, SHEBANG_NODE_FLAGS, spawnCli } from '../helpers/cli.js';
import { DEV_SIGNING_KEY, devIssuer, startTestGateway, type TestGateway } from '../helpers/gateway.js';

const ROOT = new URL('../../', import.meta.url);
const WARNING = /node was started without/;

/** The node flags a command line gives before its script (`node <flags> dist/gateway/cli/main.js start`). */
function flagsBefore(argv: readonly string[], script: string): string[] {
  const node = argv.indexOf('node');
  const at = argv.indexOf(script);
  expect(node, `node in ${argv.join(' ')}`).toBeGreaterThanOrEqual(0);
  expect(at, `${script} in ${argv.join(' ')}`).toBeGreaterThan(node);
  return argv.slice(node + 1, at);
}

describe('missingNodeFlags', () => {
  it('names each flag the process lacks; V8 reads _ for -', () => {
    expect(missingNodeFlags([])).toEqual([...NODE_FLAGS]);
    expect(missingNodeFlags(['--import', 'tsx', '--no-memory-reducer'])).toEqual(['--single-threaded-gc']);
    expect(missingNodeFlags(['--no_memory_reducer', '--single_threaded_gc'])).toEqual([]);
    expect(missingNodeFlags(['--memory-reducer', '--single-threaded-gc'])).toEqual(['--no-memory-reducer']);
  });
});

// V8 reads these flags when it sets up the heap, so every way the gateway is started names them.
describe('the gateway starts with its node flags however it is launched', () => {
  it('npm start, npm run valet, the Docker image and the valet command all pass exactly NODE_FLAGS', () => {
    const pkg = JSON.parse(readFileSync(new URL('package.json', ROOT), 'utf8')) as { scripts: Record<string, string> };
    expect(flagsBefore(pkg.scripts['start']!.split(/\s+/), 'dist/gateway/cli/main.js')).toEqual([...NODE_FLAGS]);
    expect(flagsBefore(pkg.scripts['valet']!.split(/\s+/), 'dist/gateway/cli/main.js')).toEqual([...NODE_FLAGS]);
    const cmd = /^CMD (\[.*\])$/m.exec(readFileSync(new URL('Dockerfile', ROOT), 'utf8'))?.[1];
    expect(cmd, 'the Dockerfile has a CMD').toBeDefined();
    expect(flagsBefore(JSON.parse(cmd as string) as string[], 'dist/gateway/cli/main.js')).toEqual([...NODE_FLAGS]);
    expect(SHEBANG.slice(0, 3)).toEqual(['/usr/bin/env', '-S', 'node']);
    expect(SHEBANG_NODE_FLAGS).toEqual([...NODE_FLAGS]);
  });

  it('the #! line, run by the kernel, starts a node process that has the flags', () => {
    // A script of its own under the same #! line, executed directly: the kernel hands `env` the
    // rest of the line as one argument, which `-S` splits into node and its flags.
    const dir = mkdtempSync(join(tmpdir(), 'valet-shebang-'));
    try {
      const script = join(dir, 'argv.js');
      writeFileSync(script, `${readFileSync(CLI, 'utf8').split('\n')[0]}\nprocess.stdout.write(JSON.stringify(process.execArgv));\n`, { mode: 0o700 });
      const r = spawnSync(script, [], { encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(missingNodeFlags(JSON.parse(r.stdout) as string[])).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the start-up log says when the flags are missing', () => {
  let gw: TestGateway | undefined;
  let root: string | undefined;
  afterEach(async () => {
    await gw?.close();
    gw = undefined;
    if (root !== undefined) rmSync(root, { recursive: true, force: true });
    root = undefined;
  });

  it('a gateway in a process started without them warns, naming them', async () => {
    // This test process runs without them (vitest's own node).
    expect(missingNodeFlags()).toEqual([...NODE_FLAGS]);
    gw = await startTestGateway({ upstreams: [{ name: 'api', origin: 'http://127.0.0.1:9', credential: { scheme: 'bearer', secret: 'API_KEY' } }], rules: [], env: { API_KEY: 'k' } });
    const line = gw.logs.find((l) => WARNING.test(l));
    expect(line, 'the warning').toBeDefined();
    expect(JSON.parse(line as string)).toMatchObject({ level: 40, missing: [...NODE_FLAGS] });
  });

  it('valet start as its #! line runs it does not warn', async () => {
    root = mkdtempSync(join(tmpdir(), 'valet-flags-'));
    const configDir = join(root, 'config');
    mkdirSync(configDir);
    writeFileSync(join(configDir, 'gateway.yaml'), stringify({ gateway: { listen: { host: '127.0.0.1', port: 0 }, admin: { listen: { host: '127.0.0.1', port: 0 } } }, issuers: [devIssuer] }));
    const child = spawnCli(['start'], { env: { VALET_CONFIG: configDir, VALET_DATA: join(root, 'data'), VALET_TEST_SIGNING_KEY: DEV_SIGNING_KEY } });
    let out = '';
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    try {
      await listeningPort(child, (c) => (out += c));
      expect(out).toContain('"msg":"valet listening"');
      expect(out).not.toMatch(WARNING);
    } finally {
      child.kill('SIGTERM');
      await exited;
    }
  });
});
