/**
 * Approvals memory benchmark: hold N requests (default 1,000) at once in a real gateway, waiting
 * for a human, then approve them all; report the gateway's RSS at baseline, while holding and
 * after release.
 *
 *   npm run bench:approvals                    1,000 held requests
 *   npm run bench:approvals -- --held 2000     another count
 *   npm run bench:approvals -- --strict        exit 1 when a goal is missed
 *
 * The gateway runs in its own process (bench/targets/approvals-gateway.ts, `node --expose-gc`),
 * with the real composition root, a hold-mode rule, the SQLite approvals store and a signed
 * webhook channel; the upstream, the webhook receiver and the agents (one connection per held
 * request) are in this process. Every RSS figure is taken after a full GC in the gateway, so it
 * shows what is retained, not garbage not yet collected.
 *
 * Goals (issue 5): at most 50 MB more RSS while holding 1,000 requests than at baseline, and RSS
 * back near baseline after release (within 50 % of the holding increase, or 10 MB).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { arch, cpus, platform, release, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Agent, request } from 'undici';
import { forkChild, type BenchChild } from './lib/child.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const MB = 1024 * 1024;

const { values: flags } = parseArgs({
  options: {
    held: { type: 'string', default: '1000' },
    'body-bytes': { type: 'string', default: '512' },
    warmup: { type: 'string', default: '100' },
    strict: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (flags.help) {
  process.stdout.write('Usage: npm run bench:approvals -- [--held N (1000)] [--body-bytes N (512)] [--warmup N (100)] [--strict]\n');
  process.exit(0);
}
const HELD = Number(flags.held);
const BODY_BYTES = Number(flags['body-bytes']);
const WARMUP = Number(flags.warmup);

interface Stats {
  gc: boolean;
  rss: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}

function listen(handler: Parameters<typeof createServer>[1]): Promise<{ server: Server; origin: string }> {
  const server = createServer(handler);
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}` })));
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'valet-bench-approvals-'));
  let upstreamCalls = 0;
  let webhooks = 0;
  const upstream = await listen((req, res) => {
    req.resume();
    req.on('end', () => {
      upstreamCalls++;
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
    });
  });
  const receiver = await listen((req, res) => {
    req.resume();
    req.on('end', () => {
      webhooks++;
      res.writeHead(204).end();
    });
  });
  let child: BenchChild | undefined;
  const agent = new Agent({ connections: HELD + WARMUP + 100, pipelining: 1, headersTimeout: 0, bodyTimeout: 0, keepAliveTimeout: 60_000 });
  const adminAgent = new Agent({ connections: 32 });
  try {
    child = await forkChild({
      name: 'valet',
      script: join(HERE, 'targets', 'approvals-gateway.ts'),
      args: [work, upstream.origin, `${receiver.origin}/hook`],
      execArgv: ['--expose-gc'],
      env: { ...process.env, VALET_LOG_LEVEL: 'warn' },
    });
    const { url, adminUrl, token, adminToken } = child.ready as unknown as { url: string; adminUrl: string; token: string; adminToken: string };
    const stats = (): Promise<Stats> => (child as BenchChild).ask<Stats>('stats', 60_000);
    const body = JSON.stringify({ amount: 1234, memo: 'x'.repeat(Math.max(0, BODY_BYTES - 30)) });

    const hold = (i: number): Promise<number> =>
      request(`${url}/bench/v1/held/${i}`, {
        method: 'POST',
        dispatcher: agent,
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body,
      }).then(async (r) => {
        await r.body.dump();
        return r.statusCode;
      });
    const pendingIds = async (): Promise<string[]> => {
      const r = await request(`${adminUrl}/api/approvals?status=pending&limit=1000`, { dispatcher: adminAgent, headers: { authorization: `Bearer ${adminToken}` } });
      return ((await r.body.json()) as { approvals: { id: string }[] }).approvals.map((a) => a.id);
    };
    const approveAll = async (want: number): Promise<number> => {
      let approved = 0;
      while (approved < want) {
        const ids = await pendingIds();
        if (ids.length === 0) {
          await sleep(20);
          continue;
        }
        for (let i = 0; i < ids.length; i += 50) {
          await Promise.all(
            ids.slice(i, i + 50).map(async (id) => {
              const r = await request(`${adminUrl}/api/approvals/${id}/approve`, {
                method: 'POST',
                dispatcher: adminAgent,
                headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
                body: '{"reason":"bench"}',
              });
              await r.body.dump();
              if (r.statusCode === 200) approved++;
            }),
          );
        }
      }
      return approved;
    };
    const waitPending = async (n: number): Promise<void> => {
      const deadline = Date.now() + 120_000;
      let seen = 0;
      while ((seen = (await pendingIds()).length) < Math.min(n, 1000)) {
        if (Date.now() > deadline) throw new Error(`only ${seen} of ${n} requests were parked`);
        await sleep(50);
      }
    };

    // Warm-up: the same path end to end, so that code, statements and pools exist at baseline.
    const warm = Array.from({ length: WARMUP }, (_, i) => hold(i));
    await waitPending(WARMUP);
    await approveAll(WARMUP);
    const warmStatuses = await Promise.all(warm);
    if (warmStatuses.some((s) => s !== 200)) throw new Error(`warm-up: statuses ${[...new Set(warmStatuses)].join(',')}`);
    await sleep(1_000);
    const baseline = await stats();

    // Hold N requests at once.
    const t0 = performance.now();
    const held = Array.from({ length: HELD }, (_, i) => hold(WARMUP + i));
    if (HELD <= 1000) await waitPending(HELD);
    else await sleep(5_000);
    const parkedMs = performance.now() - t0;
    await sleep(500);
    const holding = await stats();

    // Release: approve them all; each held request is forwarded and answered.
    const t1 = performance.now();
    const before = upstreamCalls;
    await approveAll(HELD);
    const statuses = await Promise.all(held);
    const releasedMs = performance.now() - t1;
    const ok = statuses.filter((s) => s === 200).length;
    await sleep(2_000);
    const after = await stats();
    // The agents go away: their 1,000 connections close (as the gateway's idle timeout would do).
    await agent.close();
    await sleep(8_000);
    const settled = await stats();

    const extra = (holding.rss - baseline.rss) / MB;
    const back = (settled.rss - baseline.rss) / MB;
    const goalHold = extra <= 50;
    const goalBack = back <= Math.max(10, extra * 0.5);
    const row = (name: string, s: Stats): string =>
      `| ${name} | ${(s.rss / MB).toFixed(1)} | ${((s.rss - baseline.rss) / MB >= 0 ? '+' : '')}${((s.rss - baseline.rss) / MB).toFixed(1)} | ${(s.heapUsed / MB).toFixed(1)} | ${(s.external / MB).toFixed(1)} |`;
    const lines = [
      `Approvals memory benchmark — ${HELD} held requests (${BODY_BYTES}-byte JSON bodies), ${new Date().toISOString()}`,
      `Node ${process.version}, ${platform()} ${release()} ${arch()}, ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), ${(totalmem() / 1024 ** 3).toFixed(1)} GB; GC before each figure: ${baseline.gc ? 'yes' : 'NO'}`,
      '',
      '| gateway | RSS MB | vs baseline | heap used MB | external MB |',
      '| --- | ---: | ---: | ---: | ---: |',
      row(`baseline (after ${WARMUP} warm-up approvals)`, baseline),
      row(`holding ${HELD}`, holding),
      row('2 s after release (agents still connected)', after),
      row('10 s after release, agents disconnected', settled),
      '',
      `parked ${HELD} in ${(parkedMs / 1000).toFixed(2)} s; released (approve via admin API → forwarded → answered) in ${(releasedMs / 1000).toFixed(2)} s; ${ok}/${HELD} answered 200; upstream calls ${upstreamCalls - before}; webhook notices received ${webhooks}`,
      `goal ≤ 50 MB extra while holding: ${extra.toFixed(1)} MB — ${goalHold ? 'met' : 'MISSED'}; back near baseline after release: ${back >= 0 ? '+' : ''}${back.toFixed(1)} MB — ${goalBack ? 'met' : 'MISSED'}`,
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
    if (ok !== HELD || upstreamCalls - before !== HELD) {
      process.stderr.write('invalid run: not every held request was executed exactly once\n');
      process.exitCode = 1;
    } else if (flags.strict && !(goalHold && goalBack)) {
      process.exitCode = 1;
    }
  } finally {
    await child?.stop().catch(() => undefined);
    await agent.close().catch(() => undefined);
    await adminAgent.close();
    upstream.server.close();
    receiver.server.close();
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
