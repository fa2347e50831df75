import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Agent, request } from 'undici';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway } from '../../gateway/main.js';
import { ValetError } from '../../gateway/errors.js';
import { parseMasterKey } from '../../gateway/secrets/crypto.js';
import { openSecretBackend } from '../../gateway/secrets/backend.js';
import type { SecretStore } from '../../gateway/secrets/port.js';
import { SECRETS_FILE } from '../../gateway/secrets/sqlite/store.js';
import { deploymentQuery, SHARED_BACKENDS } from '../helpers/backends.js';
import { runCli } from '../helpers/cli.js';
import { devIssuer, DEV_SIGNING_KEY, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { auditRowFor, expectErrorBody, requestIdOf, sleep } from '../helpers/http.js';
import { headerValues, startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';

const MASTER_KEY = randomBytes(32).toString('base64');
const VALUES = {
  acme: 'sk-acme-3f9a1c7e55d0',
  globex: 'sk-globex-b81e04aa9c',
  shared: 'sk-shared-6c2d90f1e4',
  onlyAcme: 'sk-only-acme-07be1d',
  env: 'sk-from-env-e5a0c3',
  file: 'sk-from-file-a4be72',
  rotatedOld: 'sk-rotate-old-19ce4b',
  rotatedNew: 'sk-rotate-new-d27f80',
  tamper: 'sk-tamper-me-5b3e1a',
};
/** Every value a test stores; none may appear in a log line, an audit row, an error body or CLI output. */
const ALL_VALUES = Object.values(VALUES);

/** The store's "is anything changed?" check runs at most once a second. */
const REFRESH_WAIT_MS = 1_200;

describe('secret store through the gateway', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let store: SecretStore;
  const errorBodies: string[] = [];

  const call = async (path: string, tenant: string | undefined) => {
    const token = await gw.token({ agent: 'agent-1', ...(tenant !== undefined && { tenant }) });
    const res = await request(`${gw.url}${path}`, { headers: { authorization: `Bearer ${token}` } });
    const text = await res.body.text();
    if (res.statusCode >= 400) errorBodies.push(text);
    return { status: res.statusCode, text, requestId: requestIdOf(res.headers) };
  };
  const sentKey = (): string | undefined => headerValues(upstream.requests.at(-1)!, 'authorization')[0];

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    const origin = upstream.origin;
    gw = await startTestGateway({
      upstreams: [
        { name: 'api', origin, credential: { scheme: 'bearer', secret: 'API_KEY' } },
        { name: 'only', origin, credential: { scheme: 'bearer', secret: 'ONLY_ACME' } },
        { name: 'envonly', origin, credential: { scheme: 'bearer', secret: 'ENV_ONLY_KEY' } },
        { name: 'rot', origin, credential: { scheme: 'bearer', secret: 'ROTATING_KEY' } },
        { name: 'tamper', origin, credential: { scheme: 'bearer', secret: 'TAMPER_KEY' } },
      ],
      rules: [{ id: 'allow-all', effect: 'allow' }],
      env: { VALET_MASTER_KEY: MASTER_KEY, ENV_ONLY_KEY: VALUES.env, API_KEY: 'sk-env-loses-to-the-store' },
    });
    // A second connection, as `valet secrets` would use.
    store = await openSecretBackend({ dataDir: gw.dataDir, postgresUrl: gw.backendEnv['VALET_POSTGRES_URL'] }, { key: parseMasterKey(MASTER_KEY, 'test') });
  });
  afterAll(async () => {
    await store?.close();
    await gw?.close();
    await upstream?.close();
  });

  it('starts with the store first, then the environment, and logs what the store holds (no values)', () => {
    const open = gw.logs.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l['msg'] === 'secret store open');
    // Where the store lives: the data directory's file, or the PostgreSQL server (named without credentials).
    expect(open).toMatchObject({ secrets: 0, corrupt: 0, file: SHARED_BACKENDS ? 'postgresql://127.0.0.1:5432/test' : join(gw.dataDir, SECRETS_FILE) });
    const missing = gw.logs.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => Array.isArray(l['missing']));
    expect(missing?.['missing']).toEqual(['ONLY_ACME', 'ROTATING_KEY', 'TAMPER_KEY']);
  });

  it('isolates tenants: own secret, else the shared one, never another tenant\'s', async () => {
    await store.set('API_KEY', 'acme', VALUES.acme);
    await store.set('API_KEY', 'globex', VALUES.globex);
    await store.set('ONLY_ACME', 'acme', VALUES.onlyAcme);
    await sleep(REFRESH_WAIT_MS);

    expect((await call('/api/x', 'acme')).status).toBe(200);
    expect(sentKey()).toBe(`Bearer ${VALUES.acme}`);
    expect((await call('/api/x', 'globex')).status).toBe(200);
    expect(sentKey()).toBe(`Bearer ${VALUES.globex}`);

    // No shared API_KEY in the store yet: a tenant without its own falls through to the environment.
    expect((await call('/api/x', 'initech')).status).toBe(200);
    expect(sentKey()).toBe('Bearer sk-env-loses-to-the-store');

    await store.set('API_KEY', null, VALUES.shared);
    await sleep(REFRESH_WAIT_MS);
    for (const tenant of ['initech', undefined]) {
      expect((await call('/api/x', tenant)).status).toBe(200);
      expect(sentKey()).toBe(`Bearer ${VALUES.shared}`);
    }
    expect((await call('/api/x', 'acme')).status).toBe(200);
    expect(sentKey()).toBe(`Bearer ${VALUES.acme}`);

    // acme's tenant-only secret is nobody else's, and there is no shared fallback for it.
    expect((await call('/only/x', 'acme')).status).toBe(200);
    expect(sentKey()).toBe(`Bearer ${VALUES.onlyAcme}`);
    const before = upstream.requests.length;
    for (const tenant of ['globex', 'ACME', 'acme ', undefined]) {
      const r = await call('/only/x', tenant);
      expect(r.status, String(tenant)).toBe(503);
      expectErrorBody(r.text, 'VALET_ERR_CREDENTIAL_UNAVAILABLE', r.requestId);
      expect((await auditRowFor(gw, r.requestId)).error_code).toBe('VALET_ERR_CREDENTIAL_UNAVAILABLE');
    }
    expect(upstream.requests.length).toBe(before);
  });

  it('falls back to the environment for secrets the store does not have', async () => {
    expect((await call('/envonly/x', 'acme')).status).toBe(200);
    expect(sentKey()).toBe(`Bearer ${VALUES.env}`);
  });

  it('records last use without a write per request', async () => {
    const before = (await store.list({ tenant: 'acme' })).find((s) => s.name === 'API_KEY');
    expect(before?.lastUsedAt).toBeNull();
    for (let i = 0; i < 20; i++) await call('/api/x', 'acme');
    // Written at most once a minute (and at shutdown); nothing yet.
    expect((await store.list({ tenant: 'acme' })).find((s) => s.name === 'API_KEY')?.lastUsedAt).toBeNull();
    await gw.gateway.secretStore?.flushUsage();
    expect((await store.list({ tenant: 'acme' })).find((s) => s.name === 'API_KEY')?.lastUsedAt).toBeTypeOf('number');
  });

  it('rotation under load: every request succeeds, the upstream sees the old value, then only the new one', async () => {
    await store.set('ROTATING_KEY', null, VALUES.rotatedOld);
    await sleep(REFRESH_WAIT_MS);
    const token = await gw.token({ agent: 'load', tenant: 'acme' });
    const agent = new Agent({ connections: 200 });
    const statuses: number[] = [];
    const first = upstream.requests.length;
    let stop = false;
    let sent = 0;
    const worker = async (): Promise<void> => {
      while (!stop) {
        sent++;
        const res = await request(`${gw.url}/rot/v1/x`, { headers: { authorization: `Bearer ${token}` }, dispatcher: agent });
        await res.body.text();
        statuses.push(res.statusCode);
      }
    };
    const workers = Array.from({ length: 200 }, worker);
    await sleep(300);
    const beforeRotation = upstream.requests.length;
    // The rotation comes from another process, exactly as an operator runs it.
    const rotated = await runCli(['secrets', 'rotate', 'ROTATING_KEY'], {
      env: { VALET_DATA: gw.dataDir, VALET_CONFIG: gw.configDir, VALET_MASTER_KEY: MASTER_KEY },
      input: `${VALUES.rotatedNew}\n`,
    });
    expect(rotated.stderr).toBe('');
    expect(rotated.code).toBe(0);
    expect(rotated.stdout).toBe('rotated ROTATING_KEY (shared) to version 2; a running gateway uses it within a second\n');
    await sleep(REFRESH_WAIT_MS + 300);
    stop = true;
    await Promise.all(workers);
    await agent.close();

    expect(statuses.length).toBe(sent);
    expect(statuses.length).toBeGreaterThan(400);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    const seen = upstream.requests.slice(first).map((r) => headerValues(r, 'authorization')[0]);
    expect(seen.length).toBe(statuses.length);
    const oldKey = `Bearer ${VALUES.rotatedOld}`;
    const newKey = `Bearer ${VALUES.rotatedNew}`;
    expect(new Set(seen)).toEqual(new Set([oldKey, newKey]));
    // Old before the rotation, new at the end; once the new value is served the old one never comes back
    // (allowing for requests that overtake each other on their way to the upstream).
    expect(seen.slice(0, beforeRotation - first).every((v) => v === oldKey)).toBe(true);
    const firstNew = seen.indexOf(newKey);
    const lateOld = seen.slice(firstNew).filter((v) => v === oldKey).length;
    expect(lateOld).toBeLessThanOrEqual(200);
    expect(seen.slice(-200).every((v) => v === newKey)).toBe(true);
  }, 60_000);

  it('a flipped ciphertext byte or a truncated tag: 503 coded, audited, nothing forwarded; other secrets unaffected', async () => {
    await store.set('TAMPER_KEY', 'acme', VALUES.tamper);
    await store.set('TAMPER_KEY', null, VALUES.tamper);
    await sleep(REFRESH_WAIT_MS);
    expect((await call('/tamper/x', 'acme')).status).toBe(200);

    const acmeRow = "secret_id = (SELECT id FROM secrets WHERE name = 'TAMPER_KEY' AND tenant = 'acme')";
    const sharedRow = "secret_id = (SELECT id FROM secrets WHERE name = 'TAMPER_KEY' AND tenant IS NULL)";
    if (SHARED_BACKENDS) {
      const [row] = await deploymentQuery<{ ciphertext: Buffer }>(gw.dataDir, `SELECT ciphertext FROM secret_versions WHERE ${acmeRow}`);
      const ciphertext = row!.ciphertext;
      ciphertext[3] = (ciphertext[3] as number) ^ 0x80;
      await deploymentQuery(gw.dataDir, `UPDATE secret_versions SET ciphertext = $1 WHERE ${acmeRow}`, [ciphertext]);
      await deploymentQuery(gw.dataDir, `UPDATE secret_versions SET tag = substring(tag from 1 for 12) WHERE ${sharedRow}`);
      // Behind the store's back: only its generation tells the instances to reload.
      await deploymentQuery(gw.dataDir, 'UPDATE secrets_state SET generation = generation + 1');
    } else {
      const db = new Database(join(gw.dataDir, SECRETS_FILE));
      const { ciphertext } = db.prepare(`SELECT ciphertext FROM secret_versions WHERE ${acmeRow}`).get() as { ciphertext: Buffer };
      ciphertext[3] = (ciphertext[3] as number) ^ 0x80;
      db.prepare(`UPDATE secret_versions SET ciphertext = ? WHERE ${acmeRow}`).run(ciphertext);
      db.prepare(`UPDATE secret_versions SET tag = substr(tag, 1, 12) WHERE ${sharedRow}`).run();
      db.close();
    }
    await sleep(REFRESH_WAIT_MS);

    const before = upstream.requests.length;
    // acme's own secret is damaged: refused, and not replaced by the (also damaged) shared one.
    for (const tenant of ['acme', 'globex', undefined]) {
      const r = await call('/tamper/x', tenant);
      expect(r.status, String(tenant)).toBe(503);
      expectErrorBody(r.text, 'VALET_ERR_CREDENTIAL_CORRUPT', r.requestId);
      const row = await auditRowFor(gw, r.requestId);
      expect(row).toMatchObject({ status: 503, error_code: 'VALET_ERR_CREDENTIAL_CORRUPT', decision: 'allow', upstream: 'tamper', upstream_status: null });
    }
    expect(upstream.requests.length).toBe(before);
    expect((await call('/api/x', 'acme')).status).toBe(200);
    expect(gw.logs.some((l) => l.includes('failed its integrity check') && l.includes('"secretName":"TAMPER_KEY"'))).toBe(true);
  });

  it('no stored value appears in any log line, audit row, or error body', async () => {
    const rows = JSON.stringify(await gw.auditRows());
    expect(rows.length).toBeGreaterThan(1000);
    expect(errorBodies.length).toBeGreaterThan(5);
    const haystacks = { logs: gw.logs.join('\n'), audit: rows, errors: errorBodies.join('\n') };
    for (const [where, text] of Object.entries(haystacks)) {
      for (const v of [...ALL_VALUES, 'sk-env-loses-to-the-store', MASTER_KEY]) expect(text.includes(v), `${where} contains a secret`).toBe(false);
    }
  });
});

describe('mounted secret files through the gateway', () => {
  it('reads <dir>/<NAME> in the configured order, trimming one trailing newline', async () => {
    const upstream = await startFakeUpstream();
    const mounted = mkdtempSync(join(tmpdir(), 'valet-mounted-'));
    writeFileSync(join(mounted, 'FILE_KEY'), `${VALUES.file}\n`);
    const gw = await startTestGateway({
      gateway: { secrets: { sources: [{ files: mounted }, 'env'] } },
      upstreams: [{ name: 'api', origin: upstream.origin, credential: { scheme: 'header', header: 'x-key', secret: 'FILE_KEY' } }],
      rules: [{ id: 'allow-all', effect: 'allow' }],
      env: { FILE_KEY: 'env-loses-to-the-file' },
    });
    try {
      expect(gw.gateway.secretStore).toBeUndefined();
      const token = await gw.token({ tenant: 'acme' });
      const res = await request(`${gw.url}/api/x`, { headers: { authorization: `Bearer ${token}` } });
      await res.body.text();
      expect(res.statusCode).toBe(200);
      expect(headerValues(upstream.requests.at(-1)!, 'x-key')).toEqual([VALUES.file]);
      expect(gw.logs.join('\n')).not.toContain(VALUES.file);
    } finally {
      await gw.close();
      await upstream.close();
      rmSync(mounted, { recursive: true, force: true });
    }
  });
});

describe('start-up with the secret store', () => {
  let root: string;
  let configDir: string;
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'valet-secrets-start-'));
    configDir = join(root, 'config');
    mkdirSync(configDir);
    writeFileSync(
      join(configDir, 'gateway.yaml'),
      stringify({ gateway: { listen: { host: '127.0.0.1', port: 0 }, admin: { listen: { host: '127.0.0.1', port: 0 } } }, issuers: [devIssuer] }),
    );
    writeFileSync(join(configDir, 'upstreams.yaml'), stringify({ upstreams: [{ name: 'api', origin: 'http://127.0.0.1:9', credential: { scheme: 'bearer', secret: 'API_KEY' } }] }));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  const start = (dataDir: string, env: Record<string, string>, environment?: 'production') =>
    startGateway({ configDir, dataDir, env: { VALET_TEST_SIGNING_KEY: DEV_SIGNING_KEY, ...env }, environment, logDestination: { write: () => undefined } });

  async function refusal(p: Promise<unknown>): Promise<ValetError> {
    const err = await p.then(
      () => new Error('started'),
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ValetError);
    return err as ValetError;
  }

  it('refuses a wrong master key with a coded error before listening', async () => {
    const dataDir = join(root, 'wrong-key');
    const s = await openSecretBackend({ dataDir }, { key: parseMasterKey(MASTER_KEY, 'test') });
    await s.set('API_KEY', null, 'v');
    await s.close();
    const err = await refusal(start(dataDir, { VALET_MASTER_KEY: randomBytes(32).toString('hex') }));
    expect(err.code).toBe('VALET_ERR_MASTER_KEY');
    expect(err.message).toMatch(/^the master key \(id [0-9a-f]{16}\) is not the key .*secrets\.db was written with/);
    const bad = await refusal(start(dataDir, { VALET_MASTER_KEY: 'not-a-key' }));
    expect(bad.message).toContain('VALET_MASTER_KEY is not a master key');
    const gw = await start(dataDir, { VALET_MASTER_KEY: MASTER_KEY });
    await gw.close();
  });

  it('in production, refuses to start without an explicit master key', async () => {
    const err = await refusal(start(join(root, 'prod'), {}, 'production'));
    expect(err.code).toBe('VALET_ERR_MASTER_KEY');
    expect(err.message).toContain('production requires VALET_MASTER_KEY or VALET_MASTER_KEY_FILE');
  });

  it('in development, generates <data>/master-key for an empty store and warns', async () => {
    const dataDir = join(root, 'dev');
    const lines: string[] = [];
    const gw = await startGateway({ configDir, dataDir, env: { VALET_TEST_SIGNING_KEY: DEV_SIGNING_KEY }, logDestination: { write: (l: string) => void lines.push(l) } });
    await gw.close();
    expect(lines.some((l) => l.includes('generated a development master key'))).toBe(true);
  });
});
