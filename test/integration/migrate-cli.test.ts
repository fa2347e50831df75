/**
 * `valet migrate`: the schema step of a fleet's deploy. Against real PostgreSQL, two runs at once
 * (as two instances starting together would) both succeed and migrate once; nothing prints the URL.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { runCli } from '../helpers/cli.js';
import { devIssuer } from '../helpers/gateway.js';
import { pgSchemas, type PgSchemas } from '../helpers/postgres.js';

describe('valet migrate', () => {
  let root: string;
  let configDir: string;
  let schemas: PgSchemas;

  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'valet-migrate-'));
    configDir = join(root, 'config');
    mkdirSync(configDir);
    writeFileSync(join(configDir, 'gateway.yaml'), stringify({ issuers: [devIssuer] }));
    writeFileSync(join(configDir, 'upstreams.yaml'), stringify({ upstreams: [{ name: 'api', origin: 'http://127.0.0.1:9', credential: { scheme: 'bearer', secret: 'API_KEY' } }] }));
    schemas = pgSchemas();
  });
  afterAll(async () => {
    await schemas.dropAll();
    rmSync(root, { recursive: true, force: true });
  });

  it('creates the audit, approvals and secrets schemas in the URL’s search_path; concurrent runs migrate once', async () => {
    const { schema, url } = await schemas.fresh();
    const env = { VALET_CONFIG: configDir, VALET_POSTGRES_URL: url };
    const runs = await Promise.all([runCli(['migrate'], { env }), runCli(['migrate'], { env })]);
    for (const r of runs) {
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toBe(`migrated: audit log (schema ${schema})\nmigrated: approvals (schema ${schema})\nmigrated: secrets (schema ${schema})\n`);
      expect(`${r.stdout}${r.stderr}`).not.toContain('postgres://');
    }
    for (const table of ['audit_schema_version', 'approvals_schema_version', 'secrets_schema_version']) {
      const rows = (await schemas.query<{ version: number }>(schema, `SELECT version FROM ${table}`)).rows;
      expect(rows, table).toHaveLength(1);
      expect(rows[0]?.version, table).toBeGreaterThan(0);
    }
    // The tables themselves are there, in that schema and nowhere else.
    const tables = (await schemas.query<{ table_name: string }>(schema, `SELECT table_name FROM information_schema.tables WHERE table_schema = $1`, [schema])).rows.map((r) => r.table_name);
    expect(tables).toEqual(expect.arrayContaining(['audit_log', 'audit_head', 'approvals', 'secrets']));
  });

  it('says there is nothing to migrate when every backend is in the data directory', async () => {
    const r = await runCli(['migrate'], { env: { VALET_CONFIG: configDir } });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('nothing to migrate');
  });
});
