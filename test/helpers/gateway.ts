import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Writable } from 'node:stream';
import { stringify } from 'yaml';
import { openAuditBackend, postgresSettings } from '../../gateway/audit/backend.js';
import type { AuditRow } from '../../gateway/audit/port.js';
import { DEFAULT_AUDIT } from '../../gateway/config/types.js';
import { mintAgentToken, type MintOptions } from '../../gateway/auth/mint.js';
import { startGateway, type RunningGateway } from '../../gateway/main.js';
import { backendEnv, redisPrefixFor, SHARED_BACKENDS } from './backends.js';

/** Random per test process: a fixed key in the repository is one production refuses. */
export const DEV_SIGNING_KEY = randomBytes(32).toString('base64url');
export const DEV_ISSUER = 'valet-test';
export const DEV_AUDIENCE = 'valet';

export interface TestGatewayOptions {
  /** YAML sections, written as one file each (`gateway`, `issuers`, `upstreams`, `rules`). */
  upstreams: unknown[];
  rules: unknown[];
  issuers?: unknown[];
  gateway?: Record<string, unknown>;
  env?: Record<string, string>;
  /**
   * Extra environment the gateway reads (secrets, overrides). With `VALET_TEST_BACKENDS=shared` it
   * also gets the deployment's PostgreSQL and Redis (see helpers/backends.ts); `env` wins over those.
   */
  /** Extra raw YAML files (relative path → content) written into the config directory before start. */
  files?: Record<string, string>;
  /** Start the gateway with `watch: true` (reload the policy when config files change). */
  watch?: boolean;
  /** Use this directory (config/ and data/ below it) instead of a new temporary one: a restart on the same data. */
  root?: string;
}

export interface TestGateway {
  readonly gateway: RunningGateway;
  readonly url: string;
  readonly configDir: string;
  readonly dataDir: string;
  /** Every log line written so far, raw. */
  readonly logs: string[];
  token(o?: Partial<MintOptions>): Promise<string>;
  /** An admin-plane token for `subject` with the given admin roles (and tenant, for a tenant admin; groups: approver groups). */
  adminToken(roles: string[], o?: { subject?: string; tenant?: string; groups?: string[] }): Promise<string>;
  /** `http://127.0.0.1:<admin port>` */
  readonly adminUrl: string;
  /**
   * Flushes the audit writer and reads the row of every finished request, oldest first. A request
   * still being forwarded already has its (durable) decision row, with status 0 until its outcome
   * is recorded: those rows are left out, so a test never sees a half-written request.
   */
  auditRows(): Promise<AuditRow[]>;
  /** Polls (up to 5 s) until `count` rows exist, then returns them all. */
  waitForAudit(count: number): Promise<AuditRow[]>;
  /** The environment naming this deployment's shared backends (empty when embedded): pass it to CLI commands run against it. */
  readonly backendEnv: Record<string, string>;
  /** The temporary directory holding config/ and data/. */
  readonly root: string;
  /** Stops the gateway and removes its directory (unless `keep`, for a restart on the same data). */
  close(o?: { keep?: boolean }): Promise<void>;
}

export const devIssuer = {
  name: 'test',
  issuer: DEV_ISSUER,
  audience: DEV_AUDIENCE,
  algorithms: ['HS256'],
  secret: { env: 'VALET_TEST_SIGNING_KEY' },
};

/** Starts a real gateway on 127.0.0.1:0 with a temporary config and data directory. */
export async function startTestGateway(o: TestGatewayOptions): Promise<TestGateway> {
  const root = o.root ?? mkdtempSync(join(tmpdir(), 'valet-test-'));
  const configDir = join(root, 'config');
  const dataDir = join(root, 'data');
  mkdirSync(configDir, { recursive: true });
  const gatewaySection: Record<string, unknown> = { listen: { host: '127.0.0.1', port: 0 }, admin: { listen: { host: '127.0.0.1', port: 0 } }, shutdown_grace_ms: 5000, ...o.gateway };
  if (SHARED_BACKENDS) {
    // Counters of this deployment only, in the Redis every test file shares.
    const counters = (gatewaySection['counters'] ?? {}) as { redis?: Record<string, unknown> };
    gatewaySection['counters'] = { ...counters, redis: { prefix: redisPrefixFor(dataDir), ...counters.redis } };
  }
  writeFileSync(join(configDir, 'gateway.yaml'), stringify({ gateway: gatewaySection, issuers: o.issuers ?? [devIssuer] }));
  writeFileSync(join(configDir, 'upstreams.yaml'), stringify({ upstreams: o.upstreams }));
  writeFileSync(join(configDir, 'rules.yaml'), stringify({ rules: o.rules }));
  for (const [name, content] of Object.entries(o.files ?? {})) {
    // Names may be paths (`teams/payments.yaml`): a file's place in the directory scopes its rules.
    mkdirSync(dirname(join(configDir, name)), { recursive: true });
    writeFileSync(join(configDir, name), content);
  }

  const logs: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logs.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      cb();
    },
  });
  const shared = backendEnv(dataDir);
  const env = { VALET_TEST_SIGNING_KEY: DEV_SIGNING_KEY, ...shared, ...o.env };
  const gateway = await startGateway({ configDir, dataDir, logDestination: sink, env, watch: o.watch ?? false });
  const finished = async (log: AsyncIterable<AuditRow>): Promise<AuditRow[]> => {
    const rows: AuditRow[] = [];
    for await (const row of log) if (row.status !== 0) rows.push(row);
    return rows;
  };
  // Through the audit log's port, on whichever backend this gateway writes to.
  const auditRows = async (): Promise<AuditRow[]> => {
    // The gateway's own reader while it runs; once it has been closed (here or by a test), a new one.
    if (!closed && gateway.server.listening) {
      await gateway.audit.flush();
      return finished(gateway.auditLog.iterate({}));
    }
    const log = await openAuditBackend({ dataDir, readonly: true, postgres: postgresSettings(gateway.config.gateway.audit ?? DEFAULT_AUDIT, env) });
    if (log === undefined) return [];
    try {
      return await finished(log.iterate({}));
    } finally {
      await log.close();
    }
  };
  const issuerConfig = gateway.config.issuers[0];
  if (!issuerConfig) throw new Error('no issuer');
  let closed = false;
  return {
    gateway,
    url: gateway.url,
    configDir,
    dataDir,
    logs,
    token: (t = {}) =>
      mintAgentToken(issuerConfig, new TextEncoder().encode(DEV_SIGNING_KEY), { agent: 'agent-1', ttlSeconds: 300, ...t }),
    adminToken: (roles, a = {}) =>
      mintAgentToken(issuerConfig, new TextEncoder().encode(DEV_SIGNING_KEY), {
        agent: a.subject ?? 'admin-1',
        tenant: a.tenant,
        roles,
        groups: a.groups,
        ttlSeconds: 300,
        audience: gateway.config.gateway.admin.audience,
      }),
    adminUrl: gateway.admin.url,
    auditRows,
    async waitForAudit(count) {
      const deadline = Date.now() + 5000;
      for (;;) {
        const rows = await auditRows();
        if (rows.length >= count || Date.now() > deadline) return rows;
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    root,
    backendEnv: shared,
    async close(c = {}) {
      if (closed) return;
      closed = true;
      await gateway.close();
      if (!c.keep) rmSync(root, { recursive: true, force: true });
    },
  };
}
