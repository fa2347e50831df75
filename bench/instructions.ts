/**
 * Instructions per request, counted by valgrind's callgrind: what each proxy's user-space code
 * executes for one request, every thread of its process, once it is warm. Unlike CPU time, the
 * count does not move with what the host's other tenants do (on a shared VM, wall-clock runs of the
 * same code differ by 5–15 % from minute to minute), so it settles in one run whether a change or a
 * feature costs 1 % or 15 %. It leaves out what the kernel does for the process (system calls,
 * interrupts), which `npm run bench` measures.
 *
 *   npm run bench:instructions                      bare, valet, valet-no-facts, valet-no-log
 *   npm run bench:instructions -- --targets bare,valet --durability crash
 *   npm run bench:instructions -- --help
 *
 * Each target runs alone under `valgrind --tool=callgrind` on CPU 1 (the upstream on CPU 0), with
 * counting off while it starts and warms up; this process sends `--warmup` requests (8 at a time),
 * switches counting on (`callgrind_control -i on`), sends `--requests` more, switches it off and
 * reads the total. V8's optimising compiler still runs now and then after a long warm-up; its
 * instructions (and the parser's and interpreter's) are reported apart, and the comparison uses
 * the rest. Valet runs as `npm run bench` runs it (bench/targets/valet.ts: every feature on, the
 * compiled build, the node flags of gateway/node-flags.ts).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Agent, request } from 'undici';
import { buildGateway, builtGatewayIsCurrent } from './lib/build.js';
import { BenchRun, canPin, type BenchChild } from './lib/child.js';
import { jsonBody } from './lib/load.js';
import { gitState } from './lib/git.js';
import { durabilityOption, numberOption } from './lib/options.js';
import { int, markdownTable } from './lib/stats.js';
import { NODE_FLAGS } from '../gateway/node-flags.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const TARGETS = ['bare', 'valet', 'valet-no-facts', 'valet-no-log'] as const;
type Target = (typeof TARGETS)[number];
const LABELS: Record<Target, string> = {
  bare: 'bare undici proxy',
  valet: 'Valet (full path)',
  'valet-no-facts': 'Valet without sealed request facts',
  'valet-no-log': 'Valet without the request log line',
};

const HELP = `Usage: npm run bench:instructions -- [options]

  --targets LIST      bare, valet, valet-no-facts (no master key, so no sealed request facts),
                      valet-no-log (logger level warn)        (default: all four)
  --warmup N          requests before counting starts          (default 20000)
  --requests N        requests counted                         (default 3000)
  --durability LEVEL  Valet's gateway.audit.durability: strict, crash or async (default strict)
  --help

Needs valgrind (apt-get install valgrind). A target takes about 1/2 to 2 minutes.`;

const { values: flags } = parseArgs({
  options: {
    targets: { type: 'string' },
    warmup: { type: 'string' },
    requests: { type: 'string' },
    durability: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (flags.help) {
  console.log(HELP);
  process.exit(0);
}
const targets = (flags.targets ?? TARGETS.join(',')).split(',').map((t) => t.trim()) as Target[];
const unknown = targets.filter((t) => !TARGETS.includes(t));
if (unknown.length > 0 || targets.length === 0) {
  console.error(`--targets: unknown ${unknown.join(', ')} (known: ${TARGETS.join(', ')})`);
  process.exit(2);
}
const warmup = numberOption(flags.warmup, 'warmup', 20_000, 100);
const counted = numberOption(flags.requests, 'requests', 3_000, 100);
const durability = durabilityOption(flags.durability);
if (spawnSync('valgrind', ['--version']).error !== undefined || spawnSync('callgrind_control', ['-h']).error !== undefined) {
  console.error('bench:instructions needs valgrind and callgrind_control (apt-get install valgrind)');
  process.exit(2);
}

const SECRET = `sk-bench-${randomBytes(12).toString('hex')}`;
const BODY = jsonBody(1024);
/** Requests in flight at once, from this process. */
const CONCURRENCY = 8;
/** Functions of V8's compilers, parser and interpreter set-up: the JIT's own work, reported apart. */
const COMPILING = /compiler::|Compile|Parser|Scanner|interpreter::/;

interface Count {
  total: number;
  compiling: number;
}

/** The instruction total of a callgrind dump, and the part in the JIT's own functions. */
function readCount(file: string): Count {
  // The header's `summary:` is 0 in a dump taken with callgrind_control; `totals:` ends the file.
  const totals = /^totals:\s*(\d+)/m.exec(readFileSync(file, 'utf8'));
  if (totals === null) throw new Error(`${file}: no totals line`);
  const annotated = execFileSync('callgrind_annotate', ['--threshold=100', file], { encoding: 'utf8', maxBuffer: 1 << 28 });
  let compiling = 0;
  for (const line of annotated.split('\n')) {
    const m = /^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$/.exec(line);
    if (m !== null && COMPILING.test(m[2] as string) && !(m[2] as string).includes('PROGRAM TOTALS')) compiling += Number((m[1] as string).replace(/,/g, ''));
  }
  return { total: Number(totals[1]), compiling };
}

async function load(url: string, token: string | undefined, n: number, agent: Agent): Promise<void> {
  let next = 0;
  const headers: Record<string, string> = { 'content-type': 'application/json', ...(token !== undefined && { authorization: `Bearer ${token}` }) };
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next++ < n) {
        const r = await request(url, { method: 'POST', body: BODY, headers, dispatcher: agent });
        await r.body.text();
        if (r.statusCode !== 200) throw new Error(`${url} answered ${r.statusCode}`);
      }
    }),
  );
}

const run = new BenchRun({ tmpPrefix: 'valet-bench-instr-', budgetS: 600 + targets.length * (120 + (warmup + counted) * 0.02) });
run.finish(async () => {
  const env: Record<string, string | undefined> = { ...process.env, VALET_BENCH_DURABILITY: durability };
  delete env['NODE_OPTIONS'];
  delete env['VALET_LOG_LEVEL'];
  if (targets.some((t) => t.startsWith('valet')) && !builtGatewayIsCurrent()) buildGateway();
  const pinned = canPin(2);
  const upstream = await run.fork({ name: 'upstream', script: join(HERE, 'targets/upstream.ts'), args: [`Bearer ${SECRET}`, 'none'], env, ...(pinned && { cpu: 0 }) });
  console.log('# Instructions per request (callgrind)\n');
  console.log(`code: ${gitState()}; node ${process.version}; valgrind ${execFileSync('valgrind', ['--version'], { encoding: 'utf8' }).trim()}`);
  console.log(`workload: POST /v1/echo, 1024 B JSON body, ${CONCURRENCY} at a time; ${warmup} requests to warm up, ${counted} counted; Valet durability ${durability}${pinned ? '; each target on CPU 1, the upstream on CPU 0' : ''}\n`);

  const counts = new Map<Target, Count>();
  for (const t of targets) {
    const out = join(run.root, `${t}.callgrind`);
    const valet = t !== 'bare';
    const child: BenchChild = await run.fork({
      name: t,
      script: join(HERE, valet ? 'targets/valet.ts' : 'targets/bare-proxy.ts'),
      args: valet ? [join(run.root, t), upstream.ready.url, SECRET] : [upstream.ready.url],
      env: { ...env, ...(t === 'valet-no-facts' && { VALET_BENCH_NO_FACTS: '1' }), ...(t === 'valet-no-log' && { VALET_LOG_LEVEL: 'warn' }) },
      execArgv: valet ? [...NODE_FLAGS] : [],
      wrap: ['valgrind', '-q', '--tool=callgrind', '--smc-check=all-non-file', '--instr-atstart=no', `--callgrind-out-file=${out}`],
      readyTimeoutMs: 300_000,
      ...(pinned && { cpu: 1 }),
    });
    const agent = new Agent({ connections: CONCURRENCY });
    const url = `${child.ready.url}/v1/echo`;
    const token = valet ? String(child.ready['token']) : undefined;
    const started = Date.now();
    await load(url, token, warmup, agent);
    execFileSync('callgrind_control', ['-i', 'on', String(child.pid)], { stdio: 'ignore' });
    await load(url, token, counted, agent);
    execFileSync('callgrind_control', ['-i', 'off', String(child.pid)], { stdio: 'ignore' });
    execFileSync('callgrind_control', ['-d', String(child.pid)], { stdio: 'ignore' });
    await agent.close();
    const dump = readdirSync(run.root).filter((f) => f.startsWith(`${t}.callgrind.`)).sort().at(-1);
    if (dump === undefined) throw new Error(`${t}: callgrind wrote no dump`);
    const c = readCount(join(run.root, dump));
    counts.set(t, c);
    console.log(`${LABELS[t]}: ${int(c.total / counted)} instructions per request (${Math.round((Date.now() - started) / 1000)} s)`);
    await child.stop(120_000);
  }

  const bare = counts.get('bare');
  const full = counts.get('valet');
  const rest = (c: Count): number => (c.total - c.compiling) / counted;
  const rows = [...counts].map(([t, c]) => [
    LABELS[t],
    int(c.total / counted),
    int(c.compiling / counted),
    int(rest(c)),
    bare === undefined ? '—' : `${(rest(c) / rest(bare)).toFixed(2)}×`,
    full === undefined || t === 'valet' || t === 'bare' ? '—' : `${int(rest(full) - rest(c))} (${(((rest(full) - rest(c)) / rest(full)) * 100).toFixed(1)} %)`,
  ]);
  console.log('');
  console.log(markdownTable(['target', 'instructions / request', 'of which V8 compiling', 'the rest', 'rest vs bare', 'what Valet (full path) spends on what this target leaves out'], rows));
  console.log('\nUser-space instructions of every thread of the target process (system calls not included).');
  return 0;
});
