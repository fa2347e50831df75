/**
 * Valet in front of an MCP server, as deployed (bench/lib/valet.ts): the real composition root with
 * an HS256 issuer, one upstream `mcp` of `kind: mcp` whose credential is a bearer secret, one rule
 * allowing it, the SQLite audit log (durable before forward, the default) in a temporary data
 * directory, and pino at its default level writing to /dev/null through the gateway's own
 * destination (gateway/log.ts).
 *
 * Run by bench/mcp.ts in its own process; argv: <work dir> <MCP server origin> <server key>
 * [log file, instead of /dev/null]. The work dir is created (and removed) by the parent.
 */
import { failChild, serveChild } from '../lib/child.js';
import { startBenchGateway } from '../lib/valet.js';

export const MCP_UPSTREAM = 'mcp';

async function main(): Promise<void> {
  const [workDir, origin, serverKey, logFile] = process.argv.slice(2);
  if (!workDir || !origin || !serverKey) throw new Error('usage: valet-mcp.ts <work dir> <MCP server origin> <server key> [log file]');
  const valet = await startBenchGateway({
    workDir,
    logFile,
    env: { VALET_BENCH_MCP_KEY: serverKey },
    files: {
      'upstreams.yaml': { upstreams: [{ name: MCP_UPSTREAM, kind: 'mcp', origin, credential: { scheme: 'bearer', secret: 'VALET_BENCH_MCP_KEY' } }] },
      'rules.yaml': { rules: [{ id: 'bench-mcp-allow', upstream: MCP_UPSTREAM, effect: 'allow' }] },
    },
  });

  serveChild(
    {
      stats: () => valet.auditHistograms(),
      onStop: async () => {
        await valet.close();
        // Audit rows in all, and those of a tools/call of the echo tool (one per call made through Valet).
        const all = valet.auditQuery<{ n: number }>('SELECT count(*) AS n FROM audit_log').n;
        const echo = valet.auditQuery<{ n: number }>('SELECT count(*) AS n FROM audit_log WHERE tool = ?', `${MCP_UPSTREAM}.echo`).n;
        return { auditRows: { all, echo } };
      },
    },
    { url: `${valet.gateway.url}/${MCP_UPSTREAM}`, token: valet.token, logLevel: valet.gateway.logger.level },
  );
}

main().catch(failChild);
