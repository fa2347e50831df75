import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import pg from 'pg';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../gateway/config/load.js';
import { ConfigError, ValetError, type ErrorCode } from '../../gateway/errors.js';
import { masterKeyFromBytes, open, type MasterKey } from '../../gateway/secrets/crypto.js';
import { envSecretSource } from '../../gateway/secrets/env.js';
import { fileSecretSource } from '../../gateway/secrets/files.js';
import { GENERATED_KEY_FILE, resolveMasterKey } from '../../gateway/secrets/master-key.js';
import { chainSources } from '../../gateway/secrets/source.js';
import { openSecretBackend, type SecretBackendSettings } from '../../gateway/secrets/backend.js';
import { pgSchemas } from '../helpers/postgres.js';
import type { SecretStore, SecretStoreOptions, SnapshotStats } from '../../gateway/secrets/port.js';
import { SECRETS_FILE } from '../../gateway/secrets/sqlite/store.js';
import { parseSecretsFile } from '../../gateway/secrets/validate.js';

const dirs: string[] = [];
const stores: SecretStore[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'valet-secrets-test-'));
  dirs.push(d);
  return d;
}

const newKey = (): MasterKey => masterKeyFromBytes(randomBytes(32));

async function store(place: string | SecretBackendSettings, key: MasterKey | undefined, extra: SecretStoreOptions = {}): Promise<SecretStore> {
  const s = await openSecretBackend(typeof place === 'string' ? { dataDir: place } : place, { key, ...extra });
  stores.push(s);
  return s;
}

/** Direct access to a backend's tables, to tamper with ciphertexts as an attacker with the database would. */
interface Raw {
  all(sql: string, params?: unknown[]): Promise<Record<string, unknown>[]>;
  run(sql: string, params?: unknown[]): Promise<void>;
}

/** Each backend of the port: the same cases run against both (PostgreSQL in a fresh schema per store). */
interface Backend {
  readonly name: 'sqlite' | 'postgres';
  place(): Promise<SecretBackendSettings>;
  raw(place: SecretBackendSettings): Raw;
}

const pgs = pgSchemas();
afterAll(() => pgs.dropAll());

const backends: Backend[] = [
  {
    name: 'sqlite',
    place: async () => ({ dataDir: tempDir() }),
    raw: (place) => {
      const run = <T>(fn: (db: Database.Database) => T): T => {
        const db = new Database(join(place.dataDir, SECRETS_FILE));
        try {
          return fn(db);
        } finally {
          db.close();
        }
      };
      return {
        all: async (sql, params = []) => run((db) => db.prepare(sql).all(...params) as Record<string, unknown>[]),
        run: async (sql, params = []) => void run((db) => db.prepare(sql).run(...params)),
      };
    },
  },
  {
    name: 'postgres',
    place: async () => ({ dataDir: tempDir(), postgresUrl: (await pgs.fresh()).url }),
    raw: (place) => {
      const query = async (sql: string, params: unknown[]): Promise<Record<string, unknown>[]> => {
        const c = new pg.Client({ connectionString: place.postgresUrl });
        await c.connect();
        try {
          let n = 0;
          return (await c.query(sql.replace(/\?/g, () => `$${++n}`), params)).rows;
        } finally {
          await c.end();
        }
      };
      return { all: (sql, params = []) => query(sql, params), run: async (sql, params = []) => void (await query(sql, params)) };
    },
  },
];

/** Polls (up to 5 s) until `pred` holds: another instance's change arrives asynchronously. */
async function eventually(pred: () => boolean): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function codeOf(fn: () => unknown): Promise<ErrorCode | undefined> {
  try {
    await fn();
  } catch (err) {
    if (err instanceof ValetError) return err.code;
    throw err;
  }
  return undefined;
}

async function errorOf(fn: () => unknown): Promise<ValetError> {
  try {
    await fn();
  } catch (err) {
    if (err instanceof ValetError) return err;
    throw err;
  }
  throw new Error('did not throw');
}

/** Collects what the store logs, to check that no value is ever in it. */
function capture(): { lines: string[]; log: { warn(o: object, m: string): void; error(o: object, m: string): void } } {
  const lines: string[] = [];
  const push = (o: object, m: string): void => void lines.push(JSON.stringify({ ...o, msg: m }));
  return { lines, log: { warn: push, error: push } };
}

describe.each(backends)('secret store ($name): operations', (b) => {
  it('set, get, list, rotate, remove — list never shows a value', async () => {
    const s = await store(await b.place(), newKey(), { refreshMs: 0 });
    expect(await s.isEmpty()).toBe(true);
    const created = await s.set('OPENAI_API_KEY', null, 'sk-one');
    expect(created).toMatchObject({ name: 'OPENAI_API_KEY', tenant: null, version: 1, rotatedAt: null, lastUsedAt: null });
    expect(s.get('OPENAI_API_KEY', undefined)).toBe('sk-one');
    const rotated = await s.rotate('OPENAI_API_KEY', null, 'sk-two');
    expect(rotated.version).toBe(2);
    expect(rotated.rotatedAt).toBeTypeOf('number');
    expect(s.get('OPENAI_API_KEY', undefined)).toBe('sk-two');
    const listed = await s.list();
    expect(listed).toHaveLength(1);
    expect(JSON.stringify(listed)).not.toMatch(/sk-/);
    expect(await codeOf(() => s.set('OPENAI_API_KEY', null, 'sk-x'))).toBe('VALET_ERR_SECRET_EXISTS');
    expect(await codeOf(() => s.rotate('NOPE', null, 'sk-x'))).toBe('VALET_ERR_SECRET_NOT_FOUND');
    expect(await codeOf(() => s.remove('OPENAI_API_KEY', 'acme'))).toBe('VALET_ERR_SECRET_NOT_FOUND');
    await s.remove('OPENAI_API_KEY', null);
    expect(s.get('OPENAI_API_KEY', undefined)).toBeUndefined();
    expect(await s.list()).toEqual([]);
    expect(await s.isEmpty()).toBe(true);
  });

  it('looks up the tenant\'s own secret, else the shared one, never another tenant\'s', async () => {
    const s = await store(await b.place(), newKey(), { refreshMs: 0 });
    await s.set('API_KEY', 'acme', 'acme-value');
    await s.set('API_KEY', 'globex', 'globex-value');
    await s.set('ONLY_TENANT', 'acme', 'acme-only');
    expect(s.get('API_KEY', 'acme')).toBe('acme-value');
    expect(s.get('API_KEY', 'globex')).toBe('globex-value');
    expect(s.get('API_KEY', 'initech')).toBeUndefined();
    expect(s.get('API_KEY', undefined)).toBeUndefined();
    expect(s.get('ONLY_TENANT', 'globex')).toBeUndefined();
    await s.set('API_KEY', null, 'shared-value');
    expect(s.get('API_KEY', 'initech')).toBe('shared-value');
    expect(s.get('API_KEY', undefined)).toBe('shared-value');
    expect(s.get('API_KEY', 'acme')).toBe('acme-value');
    expect((await s.list({ tenant: 'acme' })).map((i) => i.name)).toEqual(['API_KEY', 'ONLY_TENANT']);
    expect((await s.list({ tenant: null })).map((i) => [i.name, i.tenant])).toEqual([['API_KEY', null]]);
    expect((await s.list()).map((i) => i.tenant)).toEqual([null, 'acme', 'globex', 'acme']);
    expect(s.has('ONLY_TENANT')).toBe(true);
    expect(s.has('MISSING')).toBe(false);
  });

  it('refuses values with CR, LF, NUL or other control characters, and writes nothing', async () => {
    const s = await store(await b.place(), newKey(), { refreshMs: 0 });
    for (const bad of ['a\r\nInjected: 1', 'a\nb', 'a\rb', 'a\0b', 'a\x1bb', 'a\x7fb', '']) {
      const err = await errorOf(() => s.set('K', null, bad));
      expect(err.code).toBe('VALET_ERR_SECRET_INVALID');
      if (bad !== '') expect(err.message).not.toContain(bad);
    }
    expect(await s.list()).toEqual([]);
    await s.set('K', null, 'tab\tis fine');
    expect(await codeOf(() => s.rotate('K', null, 'x\ny'))).toBe('VALET_ERR_SECRET_INVALID');
    expect((await s.list())[0]?.version).toBe(1);
    expect(s.get('K', undefined)).toBe('tab\tis fine');
    expect(await codeOf(() => s.set('K2', null, 'x'.repeat(65_537)))).toBe('VALET_ERR_SECRET_INVALID');
  });

  it('refuses bad names, reserved VALET_* names and bad tenants', async () => {
    const s = await store(await b.place(), newKey());
    for (const name of ['', '1ABC', 'A-B', '../x', 'A B', 'a'.repeat(129), 'VALET_MASTER_KEY']) {
      expect(await codeOf(() => s.set(name, null, 'v'))).toBe('VALET_ERR_SECRET_INVALID');
    }
    for (const tenant of ['', 'a\nb', 'x'.repeat(257)]) expect(await codeOf(() => s.set('K', tenant, 'v'))).toBe('VALET_ERR_SECRET_INVALID');
    expect(await s.list()).toEqual([]);
  });

  it.runIf(b.name === 'sqlite')('keeps the database file mode 0600 and never writes a value in plain text', async () => {
    const dir = tempDir();
    const s = await store(dir, newKey());
    await s.set('PLAIN_CHECK', 'acme', 'plaintext-marker-8d1f');
    await s.rotate('PLAIN_CHECK', 'acme', 'plaintext-marker-9e2a');
    expect(statSync(join(dir, SECRETS_FILE)).mode & 0o777).toBe(0o600);
    for (const f of readdirSync(dir)) {
      expect(statSync(join(dir, f)).mode & 0o077, f).toBe(0);
      expect(readFileSync(join(dir, f)).includes('plaintext-marker'), f).toBe(false);
    }
  });

  it.runIf(b.name === 'postgres')('never writes a value or the master key to the database, only ciphertexts and the key check value', async () => {
    const place = await b.place();
    const key = newKey();
    const s = await store(place, key);
    await s.set('PLAIN_CHECK', 'acme', 'plaintext-marker-8d1f');
    await s.rotate('PLAIN_CHECK', 'acme', 'plaintext-marker-9e2a');
    const raw = b.raw(place);
    const dump = JSON.stringify([
      ...(await raw.all('SELECT * FROM secrets')),
      ...(await raw.all("SELECT encode(nonce, 'hex') AS n, encode(ciphertext, 'escape') AS c, encode(tag, 'hex') AS t FROM secret_versions")),
      ...(await raw.all("SELECT key, encode(value, 'hex') AS v FROM secrets_meta")),
    ]);
    expect(dump).not.toContain('plaintext-marker');
    expect(dump).toContain(key.check.toString('hex'));
    expect(await raw.all('SELECT version FROM secret_versions ORDER BY version')).toEqual([{ version: 1 }, { version: 2 }]);
  });
});

describe.each(backends)('secret store ($name): import', (b) => {
  const FILE = `# comment
OPENAI_API_KEY=sk-proj-1

  GITHUB_TOKEN = ghp_2  
QUOTED="with spaces # not a comment"
SINGLE='x=y'
VALET_DEV_SIGNING_KEY=skipped-not-an-upstream-credential\r
`;

  it('parses the secrets.example format', async () => {
    expect(parseSecretsFile(FILE)).toEqual({
      entries: [
        { name: 'OPENAI_API_KEY', value: 'sk-proj-1', line: 2 },
        { name: 'GITHUB_TOKEN', value: 'ghp_2', line: 4 },
        { name: 'QUOTED', value: 'with spaces # not a comment', line: 5 },
        { name: 'SINGLE', value: 'x=y', line: 6 },
      ],
      skipped: ['VALET_DEV_SIGNING_KEY'],
    });
    const example = parseSecretsFile(readFileSync('secrets.example', 'utf8'));
    expect(example.entries.map((e) => e.name)).toContain('ECHO_API_KEY');
  });

  it('reports every bad line by number without quoting values', async () => {
    const err = await errorOf(() => parseSecretsFile('A=ok\nnot a pair sk-hidden-1\nB=\nA=again\nC=x\u0000sk-hidden-2\n'));
    expect(err.code).toBe('VALET_ERR_SECRET_INVALID');
    expect(err.message).toContain('line 2: expected NAME=value');
    expect(err.message).toContain('line 3: the value of B is empty');
    expect(err.message).toContain('line 4: A is already set on line 1');
    expect(err.message).toContain('line 5: the value of C contains a control character');
    expect(err.message).not.toContain('sk-hidden');
    expect(await codeOf(() => parseSecretsFile('# only comments\n\n'))).toBe('VALET_ERR_SECRET_INVALID');
  });

  it('creates, rotates and leaves equal values alone, all in one transaction', async () => {
    const s = await store(await b.place(), newKey(), { refreshMs: 0 });
    await s.set('OPENAI_API_KEY', null, 'sk-proj-1');
    await s.set('GITHUB_TOKEN', null, 'old');
    const r = await s.importText(FILE, null);
    expect(r).toEqual({ created: ['QUOTED', 'SINGLE'], rotated: ['GITHUB_TOKEN'], unchanged: ['OPENAI_API_KEY'], skipped: ['VALET_DEV_SIGNING_KEY'] });
    expect(s.get('GITHUB_TOKEN', undefined)).toBe('ghp_2');
    expect((await s.list()).map((i) => [i.name, i.version])).toEqual([['GITHUB_TOKEN', 2], ['OPENAI_API_KEY', 1], ['QUOTED', 1], ['SINGLE', 1]]);
  });

  it('writes nothing when any line is bad', async () => {
    const s = await store(await b.place(), newKey());
    await s.set('EXISTING', 'acme', 'v1');
    expect(await codeOf(() => s.importText('EXISTING=v2\nNEW_ONE=x\nBAD=a\nb\n', 'acme'))).toBe('VALET_ERR_SECRET_INVALID');
    expect((await s.list()).map((i) => [i.name, i.version])).toEqual([['EXISTING', 1]]);
  });
});

describe.each(backends)('secret store ($name): master key', (b) => {
  it('refuses a wrong key once the store holds secrets; an empty store takes any key', async () => {
    const place = await b.place();
    const k1 = newKey();
    const k2 = newKey();
    await (await openSecretBackend(place, { key: k2 })).close();
    const s = await store(place, k1);
    await s.set('K', null, 'v');
    await s.close();
    const err = await errorOf(() => openSecretBackend(place, { key: k2 }));
    expect(err.code).toBe('VALET_ERR_MASTER_KEY');
    expect(err.message).toContain(`id ${k2.id}`);
    expect(err.message).toContain(`id ${k1.id}`);
    expect(err.message).not.toMatch(/postgres:\/\/postgres@/);
    expect((await store(place, k1, { refreshMs: 0 })).get('K', undefined)).toBe('v');
  });

  it('rekey re-encrypts every version under the new key, after checking the old one', async () => {
    const place = await b.place();
    const k1 = newKey();
    const k2 = newKey();
    const s = await store(place, k1, { refreshMs: 0 });
    await s.set('A', null, 'a1');
    await s.rotate('A', null, 'a2');
    await s.set('A', 'acme', 'a-acme');
    await s.set('B', null, 'b1');
    expect(await codeOf(() => s.rekey(k1))).toBe('VALET_ERR_MASTER_KEY');
    const grant = { upstream: 'crm', tenant: 'acme', user: 'alice', scope: '' };
    expect(await s.grants.write(grant, { tokens: { accessToken: 'at-1', refreshToken: 'rt-1' }, expiresAt: 1, status: 'active', problem: null, seed: null }, 0)).toBe(true);
    expect(await s.rekey(k2)).toEqual({ secrets: 3, versions: 4, grants: 1, oldKeyId: k1.id, newKeyId: k2.id });
    expect(s.get('A', undefined)).toBe('a2');
    await s.close();
    expect(await codeOf(() => openSecretBackend(place, { key: k1 }))).toBe('VALET_ERR_MASTER_KEY');
    const again = await store(place, k2, { refreshMs: 0 });
    expect(again.get('A', undefined)).toBe('a2');
    expect(again.get('A', 'acme')).toBe('a-acme');
    expect((await again.grants.read(grant))?.tokens).toEqual({ accessToken: 'at-1', refreshToken: 'rt-1' });
    // Earlier versions too.
    const [v1] = (await b
      .raw(place)
      .all("SELECT v.nonce, v.ciphertext, v.tag FROM secret_versions v JOIN secrets s ON s.id = v.secret_id WHERE s.name = 'A' AND s.tenant IS NULL AND v.version = 1")) as unknown as {
      nonce: Buffer;
      ciphertext: Buffer;
      tag: Buffer;
    }[];
    expect(open(k2, v1 as { nonce: Buffer; ciphertext: Buffer; tag: Buffer }, { tenant: null, name: 'A', version: 1 })).toBe('a1');
  });

  it('rekey changes nothing when a version fails its integrity check', async () => {
    const place = await b.place();
    const k1 = newKey();
    const s = await store(place, k1, { refreshMs: 0 });
    await s.set('A', null, 'a1');
    await s.set('B', null, 'b1');
    await b.raw(place).run("UPDATE secret_versions SET tag = substr(tag, 1, 8) WHERE secret_id = (SELECT id FROM secrets WHERE name = 'B')");
    const err = await errorOf(() => s.rekey(newKey()));
    expect(err.code).toBe('VALET_ERR_CREDENTIAL_CORRUPT');
    expect(err.message).toContain('secret B (shared) version 1');
    await s.close();
    expect((await store(place, k1, { refreshMs: 0 })).get('A', undefined)).toBe('a1');
  });
});

describe.each(backends)('secret store ($name): credential grants', (b) => {
  const key = { upstream: 'crm', tenant: null, user: null, scope: '' };
  const value = (n: number) => ({ tokens: { accessToken: `at-${n}`, refreshToken: `rt-${n}` }, expiresAt: 1_000 + n, status: 'active' as const, problem: null, seed: 'seed-digest' });

  it('writes are compare-and-set on the version: of two writers at the same version, one wins', async () => {
    const s = await store(await b.place(), newKey());
    expect(await s.grants.read(key)).toBeUndefined();
    expect(await s.grants.write(key, value(1), 0)).toBe(true);
    expect(await s.grants.write(key, value(9), 0)).toBe(false);
    expect(await s.grants.write(key, value(2), 1)).toBe(true);
    expect(await s.grants.write(key, value(3), 1)).toBe(false);
    const g = await s.grants.read(key);
    expect(g).toMatchObject({ version: 2, tokens: { accessToken: 'at-2', refreshToken: 'rt-2' }, expiresAt: 1_002, status: 'active', seed: 'seed-digest', hasRefreshToken: true });
    // Another tenant's or user's grant is another row.
    expect(await s.grants.read({ ...key, tenant: 'acme' })).toBeUndefined();
    expect(await s.grants.read({ ...key, user: 'alice' })).toBeUndefined();
  });

  it('a lease admits one owner at a time until it runs out or is released; a write clears it', async () => {
    const s = await store(await b.place(), newKey());
    // Absent: the lease is held by a placeholder that reads as absent.
    expect(await s.grants.lease(key, 0, 'a', 60_000)).toBe(true);
    expect(await s.grants.lease(key, 0, 'b', 60_000)).toBe(false);
    expect(await s.grants.read(key)).toBeUndefined();
    expect(await s.grants.list()).toEqual([]);
    expect(await s.grants.write(key, value(1), 0)).toBe(true);
    expect(await s.grants.lease(key, 1, 'b', 60_000)).toBe(true);
    expect(await s.grants.lease(key, 1, 'a', 60_000)).toBe(false);
    expect(await s.grants.lease(key, 0, 'a', 60_000)).toBe(false); // not at that version
    await s.grants.release(key, 'b');
    expect(await s.grants.lease(key, 1, 'a', 1)).toBe(true);
    await new Promise((r) => setTimeout(r, 5));
    expect(await s.grants.lease(key, 1, 'b', 60_000)).toBe(true); // a's ran out
    expect(await s.grants.write(key, value(2), 1)).toBe(true);
    expect(await s.grants.lease(key, 2, 'a', 60_000)).toBe(true);
  });

  it('lists metadata only, filters by upstream, tenant and user, leaves out pending connections, and removes', async () => {
    const s = await store(await b.place(), newKey());
    await s.grants.write(key, value(1), 0);
    await s.grants.write({ upstream: 'crm', tenant: 'acme', user: 'alice', scope: '' }, value(2), 0);
    await s.grants.write({ upstream: 'crm', tenant: null, user: null, scope: 'pending:abc' }, value(3), 0);
    const all = await s.grants.list();
    expect(all.map((g) => [g.key.tenant, g.key.user])).toEqual([
      [null, null],
      ['acme', 'alice'],
    ]);
    expect(JSON.stringify(all)).not.toMatch(/at-|rt-/);
    expect((await s.grants.list({ tenant: 'acme' })).map((g) => g.key.user)).toEqual(['alice']);
    expect((await s.grants.list({ user: 'alice' })).length).toBe(1);
    expect(await s.grants.remove({ upstream: 'crm', tenant: 'acme', user: 'alice' })).toBe(1);
    expect(await s.grants.remove({ upstream: 'crm', tenant: null, user: null })).toBe(1);
    // A pending connection is taken once, by its scope.
    expect(await s.grants.remove({ upstream: 'crm', tenant: null, user: null, scope: 'pending:abc' })).toBe(1);
    expect(await s.grants.remove({ upstream: 'crm', tenant: null, user: null, scope: 'pending:abc' })).toBe(0);
  });

  it('tokens are sealed: not in the database in the clear, and a row moved to another key does not open', async () => {
    const place = await b.place();
    const s = await store(place, newKey());
    await s.grants.write(key, { ...value(1), tokens: { accessToken: 'at-VISIBLE-1', refreshToken: 'rt-VISIBLE-1' } }, 0);
    const rows = (await b.raw(place).all('SELECT * FROM credential_grants')) as unknown as Record<string, unknown>[];
    expect(JSON.stringify(rows, (_k, v: unknown) => (Buffer.isBuffer(v) ? v.toString('latin1') : v))).not.toContain('VISIBLE');
    await b.raw(place).run("UPDATE credential_grants SET upstream = 'other'");
    expect(await codeOf(() => s.grants.read({ ...key, upstream: 'other' }))).toBe('VALET_ERR_CREDENTIAL_CORRUPT');
  });
});

describe('secret store: master key resolution', async () => {
  it('resolves VALET_MASTER_KEY, VALET_MASTER_KEY_FILE, or a generated development key', async () => {
    const dir = tempDir();
    const data = join(dir, 'data');
    const raw = randomBytes(32);
    const id = masterKeyFromBytes(raw).id;
    const base = { dataDir: data, environment: 'development' as const, storeIsEmpty: () => true, generate: true };
    expect(resolveMasterKey({ ...base, env: { VALET_MASTER_KEY: raw.toString('base64') } })?.key.id).toBe(id);
    writeFileSync(join(dir, 'key'), `${raw.toString('hex')}\n`);
    expect(resolveMasterKey({ ...base, env: { VALET_MASTER_KEY_FILE: join(dir, 'key') } })).toMatchObject({ key: { id }, generated: false });
    expect(await codeOf(() => resolveMasterKey({ ...base, env: { VALET_MASTER_KEY: raw.toString('base64'), VALET_MASTER_KEY_FILE: join(dir, 'key') } }))).toBe(
      'VALET_ERR_MASTER_KEY',
    );
    expect(await codeOf(() => resolveMasterKey({ ...base, env: { VALET_MASTER_KEY_FILE: join(dir, 'nope') } }))).toBe('VALET_ERR_MASTER_KEY');
    expect(await codeOf(() => resolveMasterKey({ ...base, env: { VALET_MASTER_KEY: 'too-short' } }))).toBe('VALET_ERR_MASTER_KEY');

    // Nothing configured, store not empty: refused (a new key could not open it).
    expect(resolveMasterKey({ ...base, env: {}, generate: false })).toBeUndefined();
    expect(await codeOf(() => resolveMasterKey({ ...base, env: {}, storeIsEmpty: () => false }))).toBe('VALET_ERR_MASTER_KEY');
    // Empty store: generated once, mode 0600, then reused.
    const generated = resolveMasterKey({ ...base, env: {} });
    expect(generated).toMatchObject({ generated: true, created: true });
    const file = join(data, GENERATED_KEY_FILE);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(resolveMasterKey({ ...base, env: {}, storeIsEmpty: () => false })).toMatchObject({ key: { id: generated?.key.id }, created: false });
    // Production never uses a generated key, even an existing one.
    const prod = await errorOf(() => resolveMasterKey({ ...base, env: {}, environment: 'production' }));
    expect(prod.code).toBe('VALET_ERR_MASTER_KEY');
    expect(prod.message).toContain('production requires VALET_MASTER_KEY or VALET_MASTER_KEY_FILE');
    // Nor a key file inside the data directory; the same key kept apart from the data is fine.
    const inside = await errorOf(() => resolveMasterKey({ ...base, env: { VALET_MASTER_KEY_FILE: file }, environment: 'production' }));
    expect(inside).toMatchObject({ code: 'VALET_ERR_MASTER_KEY', message: expect.stringContaining('is inside the data directory') });
    const apart = join(dir, 'apart.key');
    writeFileSync(apart, readFileSync(file));
    expect(resolveMasterKey({ ...base, env: { VALET_MASTER_KEY_FILE: apart }, environment: 'production' })?.key.id).toBe(generated?.key.id);
  });
});

describe.each(backends)('secret store ($name): the gateway\'s cached view', (b) => {
  /** After a change made behind the stores' backs: PostgreSQL instances notice a new generation, SQLite a new data_version. */
  const touched = async (place: SecretBackendSettings): Promise<void> => {
    if (b.name === 'postgres') await b.raw(place).run('UPDATE secrets_state SET generation = generation + 1');
  };

  it.runIf(b.name === 'sqlite')('picks up another process\'s rotation at the next check, not before', async () => {
    const dir = tempDir();
    const key = newKey();
    const cli = await store(dir, key);
    await cli.set('K', null, 'old');
    const gw = await store(dir, key, { refreshMs: 100 });
    expect(await gw.refresh()).toEqual({ secrets: 1, corrupt: 0 });
    // The port announces each reload caused by a change, so a gateway can tell another writer's change arrived.
    const changes: SnapshotStats[] = [];
    gw.onChange((stats) => changes.push(stats));
    expect(gw.get('K', undefined)).toBe('old');
    await cli.rotate('K', null, 'new');
    expect(gw.get('K', undefined)).toBe('old');
    expect(changes).toEqual([]);
    await new Promise((r) => setTimeout(r, 120));
    expect(gw.get('K', undefined)).toBe('new');
    expect(changes).toEqual([{ secrets: 1, corrupt: 0 }]);
    await cli.set('L', 'acme', 'l');
    await cli.remove('K', null);
    await new Promise((r) => setTimeout(r, 120));
    expect(gw.get('K', undefined)).toBeUndefined();
    expect(gw.has('K')).toBe(false);
    expect(gw.has('L')).toBe(true);
    expect(changes).toEqual([{ secrets: 1, corrupt: 0 }, { secrets: 1, corrupt: 0 }]);
  });

  it.runIf(b.name === 'postgres')('another instance\'s rotation, creation and removal arrive by NOTIFY, without waiting for the periodic check', async () => {
    const place = await b.place();
    const key = newKey();
    const cli = await store(place, key);
    await cli.set('K', null, 'old');
    // A periodic check far away: only the notification can bring the change in time.
    const gw = await store(place, key, { refreshMs: 60_000 });
    expect(await gw.refresh()).toEqual({ secrets: 1, corrupt: 0 });
    const changes: SnapshotStats[] = [];
    gw.onChange((stats) => changes.push(stats));
    await cli.rotate('K', null, 'new');
    await eventually(() => gw.get('K', undefined) === 'new');
    expect(changes).toEqual([{ secrets: 1, corrupt: 0 }]);
    await cli.set('L', 'acme', 'l');
    await cli.remove('K', null);
    await eventually(() => !gw.has('K'));
    await eventually(() => gw.has('L'));
    expect(gw.get('K', undefined)).toBeUndefined();
  });

  it.runIf(b.name === 'postgres')('a change whose notification was missed is picked up by the periodic generation check', async () => {
    const place = await b.place();
    const key = newKey();
    const cli = await store(place, key);
    await cli.set('K', null, 'kept');
    await cli.set('GONE', null, 'v');
    const gw = await store(place, key, { refreshMs: 50 });
    await gw.refresh();
    expect(gw.get('GONE', undefined)).toBe('v');
    // Removed behind everyone's back: no NOTIFY, only a new generation.
    await b.raw(place).run("DELETE FROM secret_versions WHERE secret_id = (SELECT id FROM secrets WHERE name = 'GONE')");
    await b.raw(place).run("DELETE FROM secrets WHERE name = 'GONE'");
    await touched(place);
    await eventually(() => !gw.has('GONE'));
    expect(gw.get('K', undefined)).toBe('kept');
  });

  it('refuses a tampered value with a coded error, logs its name only, and never falls back to the shared one', async () => {
    const place = await b.place();
    const key = newKey();
    const cli = await store(place, key);
    await cli.set('K', null, 'shared-value-x1');
    await cli.set('K', 'acme', 'acme-value-x2');
    await cli.set('OTHER', null, 'other-value-x3');
    const { lines, log } = capture();
    const gw = await store(place, key, { refreshMs: 0, log });
    await gw.refresh();
    expect(gw.get('K', 'acme')).toBe('acme-value-x2');

    const raw = b.raw(place);
    const where = "secret_id = (SELECT id FROM secrets WHERE tenant = 'acme')";
    const [row] = (await raw.all(`SELECT ciphertext FROM secret_versions WHERE ${where}`)) as { ciphertext: Buffer }[];
    const ciphertext = (row as { ciphertext: Buffer }).ciphertext;
    ciphertext[1] = (ciphertext[1] as number) ^ 0x01;
    await raw.run(`UPDATE secret_versions SET ciphertext = ? WHERE ${where}`, [ciphertext]);
    await touched(place);
    expect(await gw.refresh()).toEqual({ secrets: 3, corrupt: 1 });
    expect(await codeOf(() => gw.get('K', 'acme'))).toBe('VALET_ERR_CREDENTIAL_CORRUPT');
    expect(gw.get('K', 'globex')).toBe('shared-value-x1');
    expect(gw.get('OTHER', 'acme')).toBe('other-value-x3');

    await raw.run("UPDATE secret_versions SET tag = substr(tag, 1, 12) WHERE secret_id = (SELECT id FROM secrets WHERE name = 'OTHER')");
    await touched(place);
    await gw.refresh();
    expect(await codeOf(() => gw.get('OTHER', undefined))).toBe('VALET_ERR_CREDENTIAL_CORRUPT');

    expect(lines.some((l) => l.includes('"secretName":"K"') && l.includes('"tenant":"acme"'))).toBe(true);
    expect(lines.join('\n')).not.toMatch(/value-x/);
  });

  it('after a rekey by another process, keeps serving the values it has and says to restart', async () => {
    const place = await b.place();
    const key = newKey();
    const cli = await store(place, key);
    await cli.set('K', null, 'v1');
    const { lines, log } = capture();
    const gw = await store(place, key, { refreshMs: 0, log });
    await gw.refresh();
    expect(gw.get('K', undefined)).toBe('v1');
    await cli.rekey(newKey());
    await gw.refresh();
    await eventually(() => lines.join('\n').includes('restart the gateway with the new key'));
    expect(gw.get('K', undefined)).toBe('v1');
  });

  it('records last use in memory and writes it at most once per flush', async () => {
    const place = await b.place();
    const key = newKey();
    const cli = await store(place, key);
    await cli.set('K', null, 'v');
    await cli.set('UNUSED', null, 'v');
    const gw = await store(place, key, { refreshMs: 0, usageFlushMs: 60_000 });
    await gw.refresh();
    const before = Date.now();
    for (let i = 0; i < 100; i++) gw.get('K', 'acme');
    expect((await cli.list()).every((i) => i.lastUsedAt === null)).toBe(true);
    await gw.flushUsage();
    expect((await cli.list()).find((i) => i.name === 'K')?.lastUsedAt).toBeGreaterThanOrEqual(before);
    expect((await cli.list()).find((i) => i.name === 'UNUSED')?.lastUsedAt).toBeNull();

    // A removed secret's id is never reused, so its last use cannot land on a newer secret.
    gw.get('UNUSED', undefined);
    await cli.remove('UNUSED', null);
    await cli.set('NEWER', null, 'v');
    await gw.flushUsage();
    expect((await cli.list()).find((i) => i.name === 'NEWER')?.lastUsedAt).toBeNull();

    // Close flushes too.
    const k = (await cli.list()).find((i) => i.name === 'K')?.lastUsedAt as number;
    gw.get('K', undefined);
    await gw.close();
    expect((await cli.list()).find((i) => i.name === 'K')?.lastUsedAt).toBeGreaterThanOrEqual(k);
  });
});

describe('other secret sources', async () => {
  it('files: one file per secret, one trailing newline removed, unsafe or missing files are missing, re-read after refreshMs', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'LF'), 'value-lf\n');
    writeFileSync(join(dir, 'CRLF'), 'value-crlf\r\n');
    writeFileSync(join(dir, 'PLAIN'), 'value-plain');
    writeFileSync(join(dir, 'TWO_LINES'), 'a\nb\n');
    writeFileSync(join(dir, 'EMPTY'), '\n');
    writeFileSync(join(dir, 'BIG'), 'x'.repeat(70_000));
    mkdirSync(join(dir, 'DIR'));
    const src = fileSecretSource(dir, { refreshMs: 50 });
    expect(src.get('LF', 'acme')).toBe('value-lf');
    expect(src.get('CRLF', undefined)).toBe('value-crlf');
    expect(src.get('PLAIN', undefined)).toBe('value-plain');
    for (const name of ['TWO_LINES', 'EMPTY', 'BIG', 'DIR', 'MISSING', '../LF']) expect(src.get(name, undefined), name).toBeUndefined();
    expect(src.has('LF')).toBe(true);
    writeFileSync(join(dir, 'PLAIN'), 'rotated\n');
    expect(src.get('PLAIN', undefined)).toBe('value-plain');
    await new Promise((r) => setTimeout(r, 60));
    expect(src.get('PLAIN', undefined)).toBe('rotated');
  });

  it('chain: the first source that has the secret answers; a damaged stored value is not served from a later source', async () => {
    const dir = tempDir();
    const key = newKey();
    const s = await store(dir, key, { refreshMs: 0 });
    await s.set('A', null, 'from-store');
    await s.set('C', null, 'from-store-c');
    const env = envSecretSource(['A', 'B', 'C'], { A: 'from-env', B: 'from-env-b', C: 'from-env-c' });
    const chain = chainSources([s, env]);
    expect(chain.get('A', undefined)).toBe('from-store');
    expect(chain.get('B', 'acme')).toBe('from-env-b');
    expect(chainSources([env, s]).get('A', undefined)).toBe('from-env');
    const db = new Database(join(dir, SECRETS_FILE));
    db.prepare("UPDATE secret_versions SET tag = zeroblob(16) WHERE secret_id = (SELECT id FROM secrets WHERE name = 'C')").run();
    db.close();
    expect(await codeOf(() => chain.get('C', undefined))).toBe('VALET_ERR_CREDENTIAL_CORRUPT');
  });
});

describe('gateway.secrets.sources', async () => {
  const GATEWAY = (secrets: string): string => `gateway:
  listen: { host: 127.0.0.1, port: 0 }
${secrets}issuers:
  - { name: dev, issuer: valet-dev, audience: valet, algorithms: [HS256], secret: { env: K } }
`;
  function load(secrets: string) {
    const dir = tempDir();
    writeFileSync(join(dir, 'gateway.yaml'), GATEWAY(secrets));
    return loadConfig(dir);
  }

  it('defaults to the store, then the environment', async () => {
    expect(load('').gateway.secrets).toEqual({ sources: [{ kind: 'store' }, { kind: 'env' }], backend: 'sqlite', postgres: { url: undefined } });
  });

  it('takes an ordered list; a files directory is relative to the configuration directory', async () => {
    const config = load('  secrets: { sources: [env, { files: /run/secrets }, { files: mounted }, store] }\n');
    expect(config.gateway.secrets?.sources).toEqual([
      { kind: 'env' },
      { kind: 'files', dir: '/run/secrets' },
      { kind: 'files', dir: join(config.dir, 'mounted') },
      { kind: 'store' },
    ]);
  });

  it('refuses duplicates, unknown sources and an empty list', async () => {
    for (const bad of ['[store, store]', '[vault]', '[]', '[{ files: "" }]', '[{ file: x }]', '[{ files: a }, { files: ./a }]']) {
      let err: unknown;
      try {
        load(`  secrets: { sources: ${bad} }\n`);
      } catch (e) {
        err = e;
      }
      expect(err, bad).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).problems[0]?.path, bad).toMatch(/^gateway\.secrets\.sources/);
    }
  });
});
