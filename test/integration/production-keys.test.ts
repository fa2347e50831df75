import { randomBytes } from 'node:crypto';
import { chmodSync, cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { ValetError } from '../../gateway/errors.js';
import { startGateway } from '../../gateway/main.js';
import { request } from 'undici';
import { SHARED_BACKENDS } from '../helpers/backends.js';
import { listeningPort, runCli, spawnCli } from '../helpers/cli.js';
import { DEV_SIGNING_KEY, devIssuer, startTestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { send, STRIPE_SECRET, stripeUpstream } from './policy-support.js';

/** The signing key the repository's secrets.example used to hold: published, so refused in production. */
const PUBLISHED_KEY = 'dev-signing-key-fake-0000000000000000000000';
const GOOD_MASTER_KEY = randomBytes(32).toString('base64');
const quiet = new Writable({ write: (_c, _e, cb) => cb() });

/** A configuration directory: the dev issuer (key from VALET_TEST_SIGNING_KEY) and one upstream. */
function configDir(root: string, gateway: Record<string, unknown> = {}, issuers: unknown[] = [devIssuer]): string {
  const dir = join(root, 'config');
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, 'gateway.yaml'),
    stringify({ gateway: { listen: { host: '127.0.0.1', port: 0 }, admin: { listen: { host: '127.0.0.1', port: 0 } }, ...gateway }, issuers }),
  );
  writeFileSync(join(dir, 'upstreams.yaml'), stringify({ upstreams: [stripeUpstream('http://127.0.0.1:9')] }));
  return dir;
}

describe('production refuses development, example and weak keys at start', () => {
  let root: string;
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'valet-prodkeys-'));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  /** Starts a gateway and returns the coded error it refused with (never starting is the point). */
  const refusal = async (env: Record<string, string>, gateway: Record<string, unknown> = {}, issuers?: unknown[]): Promise<ValetError> => {
    const dir = mkdtempSync(join(root, 'case-'));
    const start = startGateway({ configDir: configDir(dir, gateway, issuers), dataDir: join(dir, 'data'), environment: 'production', env: { STRIPE_KEY: STRIPE_SECRET, ...env }, logDestination: quiet });
    await expect(start).rejects.toBeInstanceOf(ValetError);
    return (await start.then(
      () => undefined,
      (e: unknown) => e,
    )) as ValetError;
  };
  const good = { VALET_TEST_SIGNING_KEY: DEV_SIGNING_KEY, VALET_MASTER_KEY: GOOD_MASTER_KEY };

  it('signing key: published, example-looking, low-entropy — named by variable, value never shown', async () => {
    for (const [value, why] of [
      [PUBLISHED_KEY, 'published in the Valet repository'],
      ['my-example-signing-key-for-the-gateway-01', 'example or development value'],
      ['a'.repeat(48), 'too little entropy'],
      ['abababababababababababababababababababab', 'too little entropy'],
    ] as const) {
      const e = await refusal({ ...good, VALET_TEST_SIGNING_KEY: value });
      expect(e.code).toBe('VALET_ERR_CONFIG');
      expect(e.message).toContain('VALET_TEST_SIGNING_KEY');
      expect(e.message).toContain(why);
      expect(e.message).not.toContain(value);
    }
  });

  it('signing key from VALET_TEST_SIGNING_KEY_FILE is checked the same way; both set is refused', async () => {
    const file = join(root, 'signing-key');
    writeFileSync(file, `${PUBLISHED_KEY}\n`);
    const e = await refusal({ VALET_MASTER_KEY: GOOD_MASTER_KEY, VALET_TEST_SIGNING_KEY_FILE: file });
    expect(e.message).toMatch(/^VALET_TEST_SIGNING_KEY_FILE \(.*signing-key\) is a development value/);
    expect((await refusal({ ...good, VALET_TEST_SIGNING_KEY_FILE: file })).message).toContain('both VALET_TEST_SIGNING_KEY and VALET_TEST_SIGNING_KEY_FILE are set');
  });

  it('secret.generate: true never generates in production: the variable must be set', async () => {
    const e = await refusal({ VALET_MASTER_KEY: GOOD_MASTER_KEY }, {}, [{ ...devIssuer, secret: { env: 'VALET_TEST_SIGNING_KEY', generate: true } }]);
    expect(e.message).toMatch(/VALET_TEST_SIGNING_KEY \(or VALET_TEST_SIGNING_KEY_FILE\) is not set \(production never uses a generated signing key\)/);
  });

  it('master key: all-zero, published-looking, or a file inside the data directory', async () => {
    const zero = await refusal({ ...good, VALET_MASTER_KEY: Buffer.alloc(32).toString('base64') });
    expect(zero).toMatchObject({ code: 'VALET_ERR_MASTER_KEY', message: expect.stringContaining('VALET_MASTER_KEY has too little entropy') });
    const dir = mkdtempSync(join(root, 'inside-'));
    mkdirSync(join(dir, 'data'));
    writeFileSync(join(dir, 'data', 'master.key'), `${GOOD_MASTER_KEY}\n`);
    const inside = startGateway({ configDir: configDir(dir), dataDir: join(dir, 'data'), environment: 'production', env: { STRIPE_KEY: STRIPE_SECRET, VALET_TEST_SIGNING_KEY: DEV_SIGNING_KEY, VALET_MASTER_KEY_FILE: join(dir, 'data', 'master.key') }, logDestination: quiet });
    await expect(inside).rejects.toMatchObject({ code: 'VALET_ERR_MASTER_KEY', message: expect.stringContaining('is inside the data directory') });
  });

  it('webhook signing secret and approval link key are checked too', async () => {
    const approvals = { approvals: { channels: [{ type: 'webhook', url: 'https://hooks.example.com/v', secret_env: 'HOOK_SECRET' }] } };
    const hook = await refusal({ ...good, HOOK_SECRET: 'webhook-example-secret-0000000000000' }, approvals);
    expect(hook.message).toContain('HOOK_SECRET looks like an example or development value');
    const link = await refusal({ ...good, VALET_APPROVAL_LINK_KEY: '0'.repeat(64) });
    expect(link.message).toContain('VALET_APPROVAL_LINK_KEY has too little entropy');
  });

  it('a placeholder (CHANGE_ME) is refused in every environment, development included', async () => {
    const dir = mkdtempSync(join(root, 'dev-'));
    const start = startGateway({ configDir: configDir(dir), dataDir: join(dir, 'data'), environment: 'development', env: { STRIPE_KEY: STRIPE_SECRET, VALET_TEST_SIGNING_KEY: 'CHANGE_ME-to-a-random-key-of-32-bytes-or-more' }, logDestination: quiet });
    await expect(start).rejects.toMatchObject({ code: 'VALET_ERR_CONFIG', message: expect.stringContaining('VALET_TEST_SIGNING_KEY still holds a placeholder') });
  });

  it('a strong signing key from a _FILE and a master key file outside the data directory start fine in production', async () => {
    const dir = mkdtempSync(join(root, 'ok-'));
    writeFileSync(join(dir, 'signing-key'), `${DEV_SIGNING_KEY}\n`);
    writeFileSync(join(dir, 'master-key'), `${GOOD_MASTER_KEY}\n`);
    const gw = await startGateway({
      configDir: configDir(dir),
      dataDir: join(dir, 'data'),
      environment: 'production',
      env: { STRIPE_KEY: STRIPE_SECRET, VALET_TEST_SIGNING_KEY_FILE: join(dir, 'signing-key'), VALET_MASTER_KEY_FILE: join(dir, 'master-key') },
      logDestination: quiet,
    });
    await gw.close();
  });
});

describe('valet start (the real CLI) refuses the repository example key in production', () => {
  let root: string;
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'valet-prodcli-'));
    cpSync('policies', join(root, 'policies'), { recursive: true });
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('exit 1, VALET_ERR_CONFIG naming VALET_DEV_SIGNING_KEY, the value nowhere in the output', async () => {
    const env = { VALET_CONFIG: join(root, 'policies'), VALET_DATA: join(root, 'data'), VALET_ENV: 'production', VALET_DEV_SIGNING_KEY: PUBLISHED_KEY, VALET_MASTER_KEY: GOOD_MASTER_KEY, VALET_PORT: '0', VALET_ADMIN_PORT: '0' };
    const r = await runCli(['start'], { env });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^valet: VALET_ERR_CONFIG: VALET_DEV_SIGNING_KEY is a development value published in the Valet repository/m);
    expect(`${r.stdout}${r.stderr}`).not.toContain(PUBLISHED_KEY);
  });

  it('secrets.example holds no usable key: importing it as .env still leaves the signing key unset', async () => {
    const env = { VALET_CONFIG: join(root, 'policies'), VALET_DATA: join(root, 'data2'), VALET_ENV: 'production', VALET_MASTER_KEY: GOOD_MASTER_KEY, VALET_PORT: '0', VALET_ADMIN_PORT: '0' };
    const r = await runCli(['start'], { env });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('VALET_DEV_SIGNING_KEY (or VALET_DEV_SIGNING_KEY_FILE) is not set (production never uses a generated signing key)');
  });
});

describe('data directory modes', () => {
  let upstream: FakeUpstream;
  beforeAll(async () => {
    upstream = await startFakeUpstream();
  });
  afterAll(async () => upstream.close());

  /** Every entry below `dir` with its permission bits, relative paths. */
  const modes = (dir: string, base = dir): Record<string, string> => {
    const out: Record<string, string> = {};
    for (const entry of readdirSync(dir)) {
      const path = join(dir, entry);
      const st = statSync(path);
      out[path.slice(base.length + 1)] = (st.mode & 0o777).toString(8);
      if (st.isDirectory()) Object.assign(out, modes(path, base));
    }
    return out;
  };

  it('after a start and a request, every file Valet keeps is 0600 and every directory 0700 — including ones an earlier run left open', async () => {
    const root = mkdtempSync(join(tmpdir(), 'valet-modes-'));
    const data = join(root, 'data');
    // What an older version (umask 022) left behind: an open directory and a world-readable key.
    mkdirSync(join(data, 'old'), { recursive: true, mode: 0o755 });
    chmodSync(data, 0o755);
    writeFileSync(join(data, 'local-signing-key'), 'x'.repeat(40), { mode: 0o644 });
    writeFileSync(join(data, 'old', 'notes'), 'n', { mode: 0o644 });
    const gw = await startTestGateway({
      root,
      upstreams: [stripeUpstream(upstream.origin)],
      rules: [{ id: 'all', upstream: 'stripe', effect: 'allow' }],
      env: { STRIPE_KEY: STRIPE_SECRET },
      // A generated signing key and (development) a generated master key: files Valet creates itself.
      issuers: [devIssuer, { name: 'local', issuer: 'valet-local', audience: 'valet', algorithms: ['HS256'], secret: { env: 'VALET_LOCAL_KEY', generate: true } }],
      gateway: { approvals: { links: { base_url: 'https://valet-admin.example.com' } } },
    });
    try {
      expect((await send(gw, upstream, '/stripe/v1/charges', { token: await gw.token() })).status).toBe(200);
      await gw.waitForAudit(1);
      const running = modes(data);
      // On shared backends the databases are PostgreSQL's and the fleet's keys come from the environment.
      const kept = SHARED_BACKENDS
        ? ['instance-id', 'local-signing-key', 'old/notes']
        : ['valet.db', 'valet.db-wal', 'valet.db-shm', 'audit-writer.lock', 'secrets.db', 'master-key', 'local-signing-key', 'approval-link-key', 'approvals.db', 'old/notes'];
      expect(Object.keys(running)).toEqual(expect.arrayContaining(kept));
      for (const [path, mode] of Object.entries(running)) expect({ path, mode }).toEqual({ path, mode: statSync(join(data, path)).isDirectory() ? '700' : '600' });
    } finally {
      await gw.close({ keep: true });
    }
    const after = modes(data);
    expect(Object.keys(after)).toContain('audit-anchors.ndjson');
    for (const [path, mode] of Object.entries(after)) expect({ path, mode }).toEqual({ path, mode: statSync(join(data, path)).isDirectory() ? '700' : '600' });
    expect((statSync(data).mode & 0o777).toString(8)).toBe('700');
    rmSync(root, { recursive: true, force: true });
  });
});

describe('valet keys init: per-install keys on first run, then a production start from them', () => {
  let root: string;
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'valet-keys-'));
    cpSync('policies', join(root, 'policies'), { recursive: true });
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('creates two random 0600 keys in a 0700 directory once, keeps them on the next run, and production starts with them', async () => {
    const keys = join(root, 'keys');
    const first = await runCli(['keys', 'init', '--dir', keys]);
    expect(first.code).toBe(0);
    expect(first.stdout).toBe(`created ${join(keys, 'valet_master_key')}\ncreated ${join(keys, 'valet_signing_key')}\n`);
    const master = readFileSync(join(keys, 'valet_master_key'), 'utf8');
    const signing = readFileSync(join(keys, 'valet_signing_key'), 'utf8');
    expect(Buffer.from(master.trim(), 'base64')).toHaveLength(32);
    expect(master).not.toBe(signing);
    expect(statSync(keys).mode & 0o777).toBe(0o700);
    for (const f of readdirSync(keys)) expect(statSync(join(keys, f)).mode & 0o777).toBe(0o600);

    const again = await runCli(['keys', 'init', '--dir', keys]);
    expect(again.stdout).toBe(`kept    ${join(keys, 'valet_master_key')}\nkept    ${join(keys, 'valet_signing_key')}\n`);
    expect(readFileSync(join(keys, 'valet_master_key'), 'utf8')).toBe(master);
    expect(readdirSync(keys).sort()).toEqual(['valet_master_key', 'valet_signing_key']);

    // What the container does: production, keys from their own directory, data elsewhere.
    const env = {
      VALET_CONFIG: join(root, 'policies'),
      VALET_DATA: join(root, 'data'),
      VALET_ENV: 'production',
      VALET_MASTER_KEY_FILE: join(keys, 'valet_master_key'),
      VALET_DEV_SIGNING_KEY_FILE: join(keys, 'valet_signing_key'),
      VALET_PORT: '0',
      VALET_ADMIN_PORT: '0',
      ECHO_API_KEY: 'echo-upstream-credential',
    };
    const minted = await runCli(['token', '--agent', 'demo', '--tenant', 'acme'], { env });
    expect(minted.code).toBe(0);
    const child = spawnCli(['start'], { env });
    try {
      const port = await listeningPort(child);
      child.stderr?.resume();
      // The minted token verifies: a policy answer (403 on an admin path), not a 401.
      const res = await request(`http://127.0.0.1:${port}/echo/admin/users`, { headers: { authorization: `Bearer ${minted.stdout.trim()}` } });
      expect(res.statusCode).toBe(403);
      expect(((await res.body.json()) as { error: { code: string } }).error.code).toBe('VALET_ERR_POLICY_DENIED');
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
  });
});
