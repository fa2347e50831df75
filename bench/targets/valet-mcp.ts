/**
 * Valet in front of an MCP server, as deployed: the real composition root (gateway/main.ts) with an
 * HS256 issuer, one upstream `mcp` of `kind: mcp` whose credential is a bearer secret, one rule
 * allowing it, the SQLite audit log (durable before forward, the default) in a temporary data
 * directory, and pino at its default level writing to /dev/null through the gateway's own
 * destination (gateway/log.ts).
 *
 * Run by bench/mcp.ts in its own process; argv: <work dir> <MCP server origin> <server key>
 * [log file, instead of /dev/null]. The work dir is created (and removed) by the parent.
 */
import { mkdirSync, openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { openAuditDatabase } from '../../gateway/audit/sqlite/store.js';
import { mintAgentToken } from '../../gateway/auth/mint.js';
import { logDestination } from '../../gateway/log.js';
import { startGateway } from '../../gateway/main.js';
import { failChild, serveChild } from '../lib/child.js';
import { readHistogram } from '../lib/stats.js';

export const MCP_UPSTREAM = 'mcp';
const SIGNING_KEY = 'bench-signing-key-0123456789abcdef0123456789abcdef';

async function main(): Promise<void> {
  const [workDir, origin, serverKey, logFile] = process.argv.slice(2);
  if (!workDir || !origin || !serverKey) throw new Error('usage: valet-mcp.ts <work dir> <MCP server origin> <server key> [log file]');
  const configDir = join(workDir, 'config');
  const dataDir = join(workDir, 'data');
  mkdirSync(configDir, { recursive: true });
  writeFileSync(
    join(configDir, 'gateway.yaml'),
    stringify({
      gateway: { listen: { host: '127.0.0.1', port: 0 }, admin: { listen: { host: '127.0.0.1', port: 0 } }, shutdown_grace_ms: 5_000 },
      issuers: [{ name: 'bench', issuer: 'valet-bench', audience: 'valet', algorithms: ['HS256'], secret: { env: 'VALET_BENCH_SIGNING_KEY' } }],
    }),
  );
  writeFileSync(
    join(configDir, 'upstreams.yaml'),
    stringify({ upstreams: [{ name: MCP_UPSTREAM, kind: 'mcp', origin, credential: { scheme: 'bearer', secret: 'VALET_BENCH_MCP_KEY' } }] }),
  );
  writeFileSync(join(configDir, 'rules.yaml'), stringify({ rules: [{ id: 'bench-mcp-allow', upstream: MCP_UPSTREAM, effect: 'allow' }] }));

  const logs = logDestination(openSync(logFile ?? '/dev/null', 'a'));
  const gateway = await startGateway({
    configDir,
    dataDir,
    logDestination: logs,
    env: { VALET_BENCH_SIGNING_KEY: SIGNING_KEY, VALET_BENCH_MCP_KEY: serverKey },
  });
  const issuer = gateway.config.issuers[0];
  if (!issuer) throw new Error('no issuer');
  const token = await mintAgentToken(issuer, new TextEncoder().encode(SIGNING_KEY), { agent: 'bench-agent', ttlSeconds: 3_600 });

  /** Audit rows in all, and those of a tools/call of the echo tool (one per call made through Valet). */
  const auditRows = (): { all: number; echo: number } => {
    const db = openAuditDatabase(dataDir, { readonly: true });
    try {
      const all = (db.prepare('SELECT count(*) AS n FROM audit_log').get() as { n: number }).n;
      const echo = (db.prepare('SELECT count(*) AS n FROM audit_log WHERE tool = ?').get(`${MCP_UPSTREAM}.echo`) as { n: number }).n;
      return { all, echo };
    } finally {
      db.close();
    }
  };

  serveChild(
    {
      stats: async () => ({
        auditWait: await readHistogram(gateway.metrics.registry.getSingleMetric('valet_audit_durable_wait_seconds')),
        auditCommit: await readHistogram(gateway.metrics.registry.getSingleMetric('valet_audit_commit_seconds')),
      }),
      onStop: async () => {
        await gateway.close();
        try {
          logs.flushSync();
        } catch {
          // nothing left to flush
        }
        return { auditRows: auditRows() };
      },
    },
    { url: `${gateway.url}/${MCP_UPSTREAM}`, token, logLevel: gateway.logger.level },
  );
}

main().catch(failChild);
