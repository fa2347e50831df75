/**
 * Memory at scale: Valet's resident memory (RSS, after full garbage collections) with 1,000 and
 * 10,000 agent connections open at once, each with a call in flight that the upstream holds, then
 * with the same connections idle (kept alive) once every call is answered.
 *
 *   npm run bench:connections                   1,000 then 10,000 connections
 *   npm run bench:connections -- --counts 500,2000,5000
 *   npm run bench:connections -- --help
 *
 * Valet is the benchmark's full data path (bench/targets/valet.ts: JWT, policy, injection,
 * scrubbing, the audit log, the request log, metrics), run as `npm start` runs it (the compiled
 * build), with `--expose-gc` and, for this benchmark only, room for that many connections from one
 * address (`max_connections`, `max_connections_per_client`) and 4,096 connections to the upstream
 * (the most an upstream may have; calls beyond them wait in its queue, as they would in production).
 * The agents are plain sockets in this process, one HTTP/1.1 keep-alive request each; the upstream
 * (bench/targets/upstream.ts) holds every call to `/v1/hold` until it is told to release them.
 * Every call must be answered 200 and audited.
 */
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { request } from 'undici';
import { buildGateway, builtGatewayIsCurrent } from './lib/build.js';
import { BenchRun, canPin, pin } from './lib/child.js';
import { gitState } from './lib/git.js';
import { markdownTable } from './lib/stats.js';
import { NODE_FLAGS } from '../gateway/node-flags.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const HELP = `Usage: npm run bench:connections -- [options]

  --counts LIST   connections to hold at once, ascending      (default 1000,10000)
  --from-source   run Valet's TypeScript sources through tsx instead of the compiled build
  --help`;

const { values: flags } = parseArgs({
  options: { counts: { type: 'string' }, 'from-source': { type: 'boolean', default: false }, help: { type: 'boolean', default: false } },
});
if (flags.help) {
  console.log(HELP);
  process.exit(0);
}
const counts = (flags.counts ?? '1000,10000').split(',').map(Number);
if (counts.some((n) => !Number.isInteger(n) || n < 1) || counts.some((n, i) => i > 0 && n <= (counts[i - 1] as number))) {
  console.error('--counts: ascending positive integers');
  process.exit(2);
}

const SECRET = `sk-bench-${randomBytes(12).toString('hex')}`;
const MB = 1024 * 1024;
const log = (s: string): void => console.log(s);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Memory {
  rss: number;
  heapUsed: number;
  external: number;
}

/** One agent: a socket with one keep-alive request on it, and its answer once it arrives. */
interface Agent {
  socket: Socket;
  answered: Promise<number>;
}

const run = new BenchRun({ tmpPrefix: 'valet-bench-conn-', budgetS: 900 });
try {
  const env: Record<string, string | undefined> = { ...process.env, VALET_BENCH_SCALE: '1' };
  delete env['NODE_OPTIONS'];
  delete env['VALET_LOG_LEVEL'];
  if (flags['from-source']) env['VALET_BENCH_FROM_SOURCE'] = '1';
  else if (!builtGatewayIsCurrent()) buildGateway();
  const upstream = await run.fork({ name: 'upstream', script: join(HERE, 'targets/upstream.ts'), args: [`Bearer ${SECRET}`, 'none'], env });
  const valet = await run.fork({ name: 'valet', script: join(HERE, 'targets/valet.ts'), args: [join(run.root, 'valet'), upstream.ready.url, SECRET], env, execArgv: [...NODE_FLAGS, '--expose-gc'] });
  if (canPin(2)) {
    pin(process.pid, 0);
    pin(upstream.pid, 0);
    pin(valet.pid, 1);
  }
  const url = new URL(`${valet.ready.url}/v1`);
  const token = String(valet.ready['token']);
  log(`# Valet's memory with many connections\n`);
  log(`code: ${gitState()}; node ${process.version}; Valet: ${String(valet.ready['build'])}; pid ${valet.pid}\n`);

  const memory = async (): Promise<Memory> => (await valet.ask<{ memory: Memory }>('stats')).memory;
  const held = async (): Promise<number> => (await upstream.ask<{ held: number }>('stats')).held;
  const head = (path: string): string =>
    `POST ${url.pathname}${path} HTTP/1.1\r\nHost: ${url.host}\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`;
  const open = (path: string): Promise<Agent> =>
    new Promise((resolve, reject) => {
      const socket = connect(Number(url.port), url.hostname);
      socket.setNoDelay(true);
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        socket.on('error', () => undefined);
        let text = '';
        const answered = new Promise<number>((done) => {
          const onData = (c: Buffer): void => {
            text += c.toString('latin1');
            const m = /^HTTP\/1\.1 (\d{3})/.exec(text);
            // The whole small answer (headers and body) arrives at once; its status is what counts.
            if (m !== null && text.includes('\r\n\r\n')) {
              socket.off('data', onData);
              done(Number(m[1]));
            }
          };
          socket.on('data', onData);
          socket.once('close', () => done(0));
        });
        socket.write(head(path));
        resolve({ socket, answered });
      });
    });

  // Warm-up: a few hundred calls, answered at once.
  for (let i = 0; i < 300; i++) {
    const r = await request(`${url.href}/warm`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: '{}' });
    await r.body.text();
    if (r.statusCode !== 200) throw new Error(`warm-up call answered ${r.statusCode}`);
  }
  await sleep(1_500);
  const baseline = await memory();
  const rows: string[][] = [['baseline (no agent connection open)', '0', '—', mb(baseline.rss), mb(baseline.heapUsed), mb(baseline.external), '—']];

  const agents: Agent[] = [];
  const problems: string[] = [];
  for (const n of counts) {
    // Opened in batches of 500, each with a call the upstream holds.
    while (agents.length < n) {
      const batch = Math.min(500, n - agents.length);
      agents.push(...(await Promise.all(Array.from({ length: batch }, () => open('/hold')))));
    }
    const deadline = Date.now() + 120_000;
    // Up to 4,096 calls reach the upstream; the rest wait in Valet's queue for its connections.
    const expectHeld = Math.min(n, 4096);
    while ((await held()) < expectHeld && Date.now() < deadline) await sleep(200);
    await sleep(1_500);
    const m = await memory();
    rows.push([`${n.toLocaleString('en-US')} connections, a call in flight on each`, n.toLocaleString('en-US'), (await held()).toLocaleString('en-US'), mb(m.rss), mb(m.heapUsed), mb(m.external), perConnection(m, baseline, n)]);
    log(`held ${n}: RSS ${mb(m.rss)} MB`);
  }
  // Release: the upstream answers what it holds, Valet sends the queued calls and those are answered at once.
  const released = Date.now();
  const statuses: number[] = [];
  for (;;) {
    const pending = agents.filter((_, i) => statuses[i] === undefined);
    if (pending.length === 0) break;
    await request(`${upstream.ready.url}/release`, { method: 'POST' }).then((r) => r.body.text());
    const settled = await Promise.race([Promise.all(agents.map((a) => a.answered)), sleep(500).then(() => undefined)]);
    if (settled !== undefined) settled.forEach((s, i) => (statuses[i] = s));
    if (Date.now() - released > 120_000) break;
  }
  const n = agents.length;
  const ok = statuses.filter((s) => s === 200).length;
  if (ok !== n) problems.push(`${n - ok} of ${n} calls were not answered 200`);
  log(`released ${n} calls in ${((Date.now() - released) / 1000).toFixed(1)} s`);
  // Idle keep-alive connections (Valet closes them after 5 s idle): measured at once.
  const idle = await memory();
  rows.push([`${n.toLocaleString('en-US')} connections kept alive, idle`, n.toLocaleString('en-US'), '0', mb(idle.rss), mb(idle.heapUsed), mb(idle.external), perConnection(idle, baseline, n)]);
  for (const a of agents) a.socket.destroy();
  await sleep(6_000);
  const after = await memory();
  rows.push(['after every connection closed', '0', '—', mb(after.rss), mb(after.heapUsed), mb(after.external), '—']);

  log('');
  log(markdownTable(['state', 'agent connections', 'calls held by the upstream', 'RSS MB', 'heap used MB', 'external MB', 'RSS per connection over baseline'], rows));
  log('\nRSS after three full garbage collections in Valet (all its threads share it). Valet holds at most 4,096 connections to the upstream; calls beyond wait in its queue.');
  const stopped = await run.cleanup();
  const rowsAudited = (stopped['valet'] as { auditRows?: number } | undefined)?.auditRows ?? 0;
  if (rowsAudited < 300 + n) problems.push(`audit log: ${rowsAudited} rows for ${300 + n} calls`);
  log(problems.length === 0 ? `\nvalidity: all ${n.toLocaleString('en-US')} held calls answered 200; ${rowsAudited.toLocaleString('en-US')} audit rows for ${(300 + n).toLocaleString('en-US')} calls` : `\nINVALID: ${problems.join('; ')}`);
  process.exit(problems.length === 0 ? 0 : 1);
} catch (err) {
  console.error(err);
  await run.cleanup();
  process.exit(1);
}

function mb(bytes: number): string {
  return (bytes / MB).toFixed(1);
}

function perConnection(m: Memory, base: Memory, n: number): string {
  return `${(((m.rss - base.rss) / n) / 1024).toFixed(1)} KB`;
}
