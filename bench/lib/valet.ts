/**
 * Valet as the benchmarks' target processes run it: the real composition root (gateway/main.ts)
 * with its configuration written to `<work dir>/config`, an HS256 issuer the agent token is minted
 * by, the audit log in `<work dir>/data` (SQLite, decision rows durable before forwarding: the
 * default) and pino at its default level ('info', unless VALET_LOG_LEVEL is set) writing every
 * request line through the destination the gateway uses for stdout (gateway/log.ts), to /dev/null
 * or a file.
 */
import { mkdirSync, openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { builtGatewayIsCurrent } from './build.js';
import type { RunningGateway } from '../../gateway/main.js';
import { readHistogram, type BucketCounts } from './stats.js';

/**
 * The gateway as `npm start` runs it: the compiled JavaScript in dist/ (tsx's transform of the
 * sources differs: esbuild's `keepNames` adds a property definition per function created, per
 * request). `VALET_BENCH_FROM_SOURCE=1`, or a build older than the sources: the sources through tsx.
 */
const fromSource = process.env['VALET_BENCH_FROM_SOURCE'] === '1' || !builtGatewayIsCurrent();
const GATEWAY = fromSource ? '../../gateway' : '../../dist/gateway';
if (fromSource && process.env['VALET_BENCH_FROM_SOURCE'] !== '1') console.error('bench: dist/ is missing or older than the sources; running the gateway from source (npm run build first to measure what npm start runs)');
const { openAuditDatabase } = (await import(`${GATEWAY}/audit/sqlite/store.js`)) as typeof import('../../gateway/audit/sqlite/store.js');
const { mintAgentToken } = (await import(`${GATEWAY}/auth/mint.js`)) as typeof import('../../gateway/auth/mint.js');
const { logDestination } = (await import(`${GATEWAY}/log.js`)) as typeof import('../../gateway/log.js');
const { startGateway } = (await import(`${GATEWAY}/main.js`)) as typeof import('../../gateway/main.js');
/** Where the gateway the benchmark runs comes from. */
export const GATEWAY_BUILD = fromSource ? 'TypeScript sources through tsx' : 'compiled build (dist/), as npm start runs it';

const SIGNING_KEY = 'bench-signing-key-0123456789abcdef0123456789abcdef';

export interface BenchGatewayOptions {
  /** Created if missing; the parent removes it. */
  workDir: string;
  /** `gateway:` settings beyond the listeners (127.0.0.1, any free port) and the shutdown grace. */
  gateway?: Record<string, unknown>;
  /** Further configuration files: file name (`upstreams.yaml`) → document. */
  files: Record<string, unknown>;
  /** The gateway's environment (secrets the configuration names). */
  env?: Record<string, string>;
  /** Where log lines go instead of /dev/null. */
  logFile?: string | undefined;
  auditWriter?: 'worker' | 'inline' | undefined;
}

export interface BenchGateway {
  readonly gateway: RunningGateway;
  /** An agent token (agent `bench-agent`, an hour) for the bench's issuer. */
  readonly token: string;
  readonly dataDir: string;
  /** Stops the gateway (draining, audit flushed) and flushes the log. */
  close(): Promise<void>;
  /** The durable-before-forward wait and the commits behind it, as /metrics exposes them. */
  auditHistograms(): Promise<{ auditWait: BucketCounts; auditCommit: BucketCounts }>;
  /** The first row of a read-only query on the SQLite audit log (after {@link close}, everything is in it). */
  auditQuery<T>(sql: string, ...params: unknown[]): T;
}

export async function startBenchGateway(o: BenchGatewayOptions): Promise<BenchGateway> {
  const configDir = join(o.workDir, 'config');
  const dataDir = join(o.workDir, 'data');
  mkdirSync(configDir, { recursive: true });
  writeFileSync(
    join(configDir, 'gateway.yaml'),
    stringify({
      gateway: { listen: { host: '127.0.0.1', port: 0 }, admin: { listen: { host: '127.0.0.1', port: 0 } }, shutdown_grace_ms: 5_000, ...o.gateway },
      issuers: [{ name: 'bench', issuer: 'valet-bench', audience: 'valet', algorithms: ['HS256'], secret: { env: 'VALET_BENCH_SIGNING_KEY' } }],
    }),
  );
  for (const [name, doc] of Object.entries(o.files)) writeFileSync(join(configDir, name), stringify(doc));

  const logs = logDestination(openSync(o.logFile ?? '/dev/null', 'a'));
  const gateway = await startGateway({
    configDir,
    dataDir,
    logDestination: logs,
    env: { ...o.env, VALET_BENCH_SIGNING_KEY: SIGNING_KEY },
    ...(o.auditWriter !== undefined && { auditWriter: o.auditWriter }),
  });
  const issuer = gateway.config.issuers[0];
  if (!issuer) throw new Error('no issuer');
  const token = await mintAgentToken(issuer, new TextEncoder().encode(SIGNING_KEY), { agent: 'bench-agent', ttlSeconds: 3_600 });

  return {
    gateway,
    token,
    dataDir,
    async close() {
      await gateway.close();
      try {
        logs.flushSync();
      } catch {
        // nothing left to flush
      }
    },
    async auditHistograms() {
      return {
        auditWait: await readHistogram(gateway.metrics.registry.getSingleMetric('valet_audit_durable_wait_seconds')),
        auditCommit: await readHistogram(gateway.metrics.registry.getSingleMetric('valet_audit_commit_seconds')),
      };
    },
    auditQuery<T>(sql: string, ...params: unknown[]): T {
      const db = openAuditDatabase(dataDir, { readonly: true });
      try {
        return db.prepare(sql).get(...params) as T;
      } finally {
        db.close();
      }
    },
  };
}
