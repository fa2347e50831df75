/**
 * The gateway under the approvals memory benchmark, in its own process (run with --expose-gc by
 * bench/approvals.ts): the real composition root, one upstream, a hold-mode escalation on
 * `/v1/held/**` (10 min timeout), caps raised to 5,000, and a signed webhook channel to the
 * parent's receiver, so that parked requests, waiters, timers and notifications are all live.
 *
 * argv: <work dir> <upstream origin> <webhook url>. `stats` runs a full GC first (when exposed)
 * and reports process.memoryUsage() and the approvals in flight.
 */
import { mkdirSync, openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { mintAgentToken } from '../../gateway/auth/mint.js';
import { startGateway } from '../../gateway/main.js';
import { failChild, serveChild } from '../lib/child.js';
import { retainedMemory } from '../lib/memory.js';

const SIGNING_KEY = 'bench-approvals-signing-key-0123456789abcdef';

async function main(): Promise<void> {
  const [workDir, origin, webhook] = process.argv.slice(2);
  if (!workDir || !origin || !webhook) throw new Error('usage: approvals-gateway.ts <work dir> <upstream origin> <webhook url>');
  const configDir = join(workDir, 'config');
  mkdirSync(configDir, { recursive: true });
  writeFileSync(
    join(configDir, 'gateway.yaml'),
    stringify({
      gateway: {
        listen: { host: '127.0.0.1', port: 0 },
        admin: { listen: { host: '127.0.0.1', port: 0 } },
        shutdown_grace_ms: 5_000,
        // Every agent of the benchmark connects from 127.0.0.1 (as behind a load balancer): past the
        // default 256 connections per address the held requests' connections would be closed.
        max_connections_per_client: 20_000,
        approvals: {
          max_pending_per_agent: 5_000,
          max_pending_per_tenant: 5_000,
          channels: [{ type: 'webhook', url: webhook, secret_env: 'BENCH_WEBHOOK_SECRET' }],
        },
      },
      issuers: [{ name: 'bench', issuer: 'valet-bench', audience: 'valet', algorithms: ['HS256'], secret: { env: 'BENCH_SIGNING_KEY' } }],
    }),
  );
  writeFileSync(join(configDir, 'upstreams.yaml'), stringify({ upstreams: [{ name: 'bench', origin, credential: { scheme: 'bearer', secret: 'BENCH_UPSTREAM_KEY' } }] }));
  writeFileSync(
    join(configDir, 'rules.yaml'),
    stringify({
      rules: [
        { id: 'bench-allow', upstream: 'bench', effect: 'allow' },
        { id: 'bench-held', upstream: 'bench', paths: ['/v1/held/**'], effect: 'escalate', reason: 'benchmark', approval: { group: 'bench', mode: 'hold', timeout: '10m' } },
      ],
    }),
  );
  const logDestination = pino.destination({ fd: openSync('/dev/null', 'a'), sync: false });
  const gateway = await startGateway({
    configDir,
    dataDir: join(workDir, 'data'),
    logDestination,
    env: { BENCH_SIGNING_KEY: SIGNING_KEY, BENCH_UPSTREAM_KEY: 'sk-bench-upstream', BENCH_WEBHOOK_SECRET: 'whsec-bench' },
  });
  const issuer = gateway.config.issuers[0];
  if (!issuer) throw new Error('no issuer');
  const key = new TextEncoder().encode(SIGNING_KEY);
  const token = await mintAgentToken(issuer, key, { agent: 'bench-agent', tenant: 'bench', ttlSeconds: 3_600 });
  const adminToken = await mintAgentToken(issuer, key, { agent: 'bench-approver', roles: ['admin'], ttlSeconds: 3_600, audience: gateway.config.gateway.admin.audience });

  serveChild(
    {
      stats: () => {
        const retained = retainedMemory();
        const m = retained ?? process.memoryUsage();
        return { gc: retained !== undefined, rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external, arrayBuffers: m.arrayBuffers };
      },
      onStop: async () => {
        await gateway.close();
        return {};
      },
    },
    { url: gateway.url, adminUrl: gateway.admin.url, token, adminToken },
  );
}

main().catch(failChild);
