/**
 * Valet's full data path, as deployed (bench/lib/valet.ts): the real composition root with an HS256
 * issuer, one upstream with bearer credential injection, one allow rule, the SQLite audit log in
 * a temporary data directory and pino at its default level ('info') writing every request line
 * to /dev/null through the destination the gateway uses for stdout (gateway/log.ts).
 *
 * Run by bench/proxy.ts in its own process; argv: <work dir> <upstream origin> <upstream secret>
 * [log file, instead of /dev/null]; `VALET_BENCH_AWS_KEY_ID` (environment) is the access key id the
 * SigV4 route signs with, the upstream secret its secret key.
 *
 * For bench/fleet.ts (`VALET_BENCH_FLEET=1`), from its environment: `VALET_POSTGRES_URL`, `VALET_REDIS_URL` and
 * `VALET_MASTER_KEY` are handed to the gateway (shared state as a fleet runs it);
 * `VALET_BENCH_AUDIT_SCHEMA` puts the audit tables in that PostgreSQL schema (the other tables
 * follow the URL's search_path); `VALET_BENCH_REDIS_PREFIX` is the counters' key prefix; and
 * `VALET_BENCH_RATE_LIMIT` (a count per minute per agent) adds a rate limit every request is
 * charged against, so the counters backend is on every request's path.
 * For bench/instructions.ts, `VALET_BENCH_NO_FACTS=1` takes credentials from the environment alone
 * (`gateway.secrets.sources: [env]`): no master key, so no sealed request facts.
 * The work dir is created (and removed) by the parent.
 */
import { failChild, serveChild } from '../lib/child.js';
import { retainedMemory } from '../lib/memory.js';
import { GATEWAY_BUILD, startBenchGateway } from '../lib/valet.js';

export const BENCH_UPSTREAM = 'bench';
/** The host name the bench upstream is also routed by. */
const BENCH_HOST = 'bench.valet.internal';

async function main(): Promise<void> {
  const [workDir, origin, upstreamSecret, logFile] = process.argv.slice(2);
  if (!workDir || !origin || !upstreamSecret) throw new Error('usage: valet.ts <work dir> <upstream origin> <upstream secret>');
  const auditSchema = process.env['VALET_BENCH_AUDIT_SCHEMA'];
  const redisPrefix = process.env['VALET_BENCH_REDIS_PREFIX'];
  const rateLimit = process.env['VALET_BENCH_RATE_LIMIT'];
  // bench/connections.ts: room for tens of thousands of connections from one address, and as many to the upstream.
  const scale = process.env['VALET_BENCH_SCALE'] === '1';
  // Only bench/fleet.ts hands shared backends on: a VALET_POSTGRES_URL left in a shell must not
  // turn `npm run bench` into a measurement of PostgreSQL.
  const fleetEnv: Record<string, string> = {};
  if (process.env['VALET_BENCH_FLEET'] === '1') {
    for (const k of ['VALET_POSTGRES_URL', 'VALET_REDIS_URL', 'VALET_MASTER_KEY']) {
      const v = process.env[k];
      if (v !== undefined && v !== '') fleetEnv[k] = v;
    }
  }
  const files: Record<string, unknown> = {
    // Also served at its root on a port of its own and under a host name: the routes the bench compares.
    // And the same upstream again with its credential from a token endpoint (cached after the first call).
    'upstreams.yaml': {
      upstreams: [
        { name: BENCH_UPSTREAM, origin, listen: { port: 0 }, hosts: [BENCH_HOST], credential: { scheme: 'bearer', secret: 'VALET_BENCH_UPSTREAM_KEY' }, ...(scale && { connections: 4096 }) },
        {
          name: `${BENCH_UPSTREAM}-oauth`,
          origin,
          credential: { scheme: 'bearer', provider: { kind: 'oauth2_client_credentials', token_url: `${origin}/oauth/token`, client_id: 'bench', client_secret: 'VALET_BENCH_UPSTREAM_KEY' } },
        },
        // And signed with AWS SigV4 for a service that hashes payloads: the body is read whole and hashed.
        {
          name: `${BENCH_UPSTREAM}-sigv4`,
          origin,
          credential: { scheme: 'aws_sigv4', service: 'bedrock', region: 'us-east-1', access_key_id: 'VALET_BENCH_AWS_KEY_ID', secret_access_key: 'VALET_BENCH_UPSTREAM_KEY' },
        },
      ],
    },
    'rules.yaml': {
      rules: [
        { id: 'bench-allow', upstream: BENCH_UPSTREAM, methods: ['POST'], paths: ['/v1/**'], effect: 'allow' },
        { id: 'bench-oauth-allow', upstream: `${BENCH_UPSTREAM}-oauth`, methods: ['POST'], paths: ['/v1/**'], effect: 'allow' },
        { id: 'bench-sigv4-allow', upstream: `${BENCH_UPSTREAM}-sigv4`, methods: ['POST'], paths: ['/v1/**'], effect: 'allow' },
      ],
    },
  };
  if (rateLimit !== undefined) {
    files['limits.yaml'] = { rate_limits: [{ id: 'bench-limit', upstream: BENCH_UPSTREAM, paths: ['/v1/**'], limit: Number(rateLimit), window: '1m', key: 'agent' }] };
  }

  // The logger level comes from VALET_LOG_LEVEL, which the parent sets ('info' unless npm run bench --valet-log-level).
  const writer = process.env['VALET_BENCH_AUDIT_WRITER'];
  const valet = await startBenchGateway({
    workDir,
    logFile,
    gateway: {
      audit: { ...(auditSchema !== undefined && { postgres: { schema: auditSchema } }), ...(process.env['VALET_BENCH_DURABILITY'] && { durability: process.env['VALET_BENCH_DURABILITY'] }) },
      ...(redisPrefix !== undefined && { counters: { redis: { prefix: redisPrefix } } }),
      ...(scale && { max_connections: 30_000, max_connections_per_client: 30_000 }),
      // bench/instructions.ts: credentials from the environment alone, so no master key and no sealed request facts.
      ...(process.env['VALET_BENCH_NO_FACTS'] === '1' && { secrets: { sources: ['env'] } }),
    },
    files,
    env: { VALET_BENCH_UPSTREAM_KEY: upstreamSecret, VALET_BENCH_AWS_KEY_ID: process.env['VALET_BENCH_AWS_KEY_ID'] ?? 'AKIABENCH', ...fleetEnv },
    // bench/audit.ts compares the audit writer on its own thread with one inline; unset, the
    // gateway places it as gateway.audit.writer: auto does (gateway/audit/sqlite/writer.ts).
    auditWriter: writer === 'inline' || writer === 'worker' ? writer : undefined,
  });
  const { gateway } = valet;

  serveChild(
    {
      // The durable-before-forward wait and the commits behind it, as /metrics exposes them.
      stats: async () => ({ auditPending: gateway.audit.pending, ...(await valet.auditHistograms()), memory: retainedMemory() }),
      onStop: async () => {
        await valet.close();
        // On PostgreSQL the fleet shares one log: the orchestrator counts its rows.
        return fleetEnv['VALET_POSTGRES_URL'] === undefined ? { auditRows: valet.auditQuery<{ n: number }>('SELECT count(*) AS n FROM audit_log').n } : {};
      },
    },
    { url: `${gateway.url}/${BENCH_UPSTREAM}`, oauthUrl: `${gateway.url}/${BENCH_UPSTREAM}-oauth`, sigv4Url: `${gateway.url}/${BENCH_UPSTREAM}-sigv4`, portUrl: gateway.upstreamListeners.get(BENCH_UPSTREAM)?.url, hostUrl: gateway.url, host: BENCH_HOST, token: valet.token, logLevel: gateway.logger.level, build: GATEWAY_BUILD },
  );
}

main().catch(failChild);
