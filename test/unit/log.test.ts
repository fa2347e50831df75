import { spawn, spawnSync } from 'node:child_process';
import { createServer, connect, type Socket } from 'node:net';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger, LOG_FLUSH_MS, logDestination, writesAtOnce } from '../../gateway/log.js';
import { sleep } from '../helpers/http.js';

let dir: string | undefined;
afterEach(() => {
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

const lines = (file: string): Record<string, unknown>[] =>
  readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);

/** A logger on {@link logDestination} to a new file. */
function fileLog() {
  dir = mkdtempSync(join(tmpdir(), 'valet-log-'));
  const file = join(dir, 'out.log');
  const dest = logDestination(openSync(file, 'a'));
  return { file, dest, logger: createLogger(dest) };
}

describe('log destination', () => {
  it('writes a few lines within LOG_FLUSH_MS although they fill no buffer, and everything on flush', async () => {
    const { file, dest, logger } = fileLog();
    logger.info({ n: 1 }, 'request');
    logger.info({ n: 2, token: 'must-not-appear' }, 'request');
    expect(lines(file)).toEqual([]); // gathered, not yet written
    // Written by the flush timer (every LOG_FLUSH_MS), with no flush asked for; polled, as a busy
    // machine may run the timer late.
    const deadline = Date.now() + 5_000;
    await sleep(LOG_FLUSH_MS);
    while (lines(file).length < 2 && Date.now() < deadline) await sleep(LOG_FLUSH_MS);
    expect(lines(file).map((l) => l['n'])).toEqual([1, 2]);
    expect(readFileSync(file, 'utf8')).not.toContain('must-not-appear');

    logger.info({ n: 3 }, 'request');
    await new Promise<void>((r) => logger.flush(() => r()));
    expect(lines(file).map((l) => l['n'])).toEqual([1, 2, 3]);
    dest.end();
    await new Promise<void>((r) => dest.once('close', r)); // it closes the descriptor
  });

  it('writes thousands of lines whole and in order, gathered into few writes', async () => {
    const { file, dest, logger } = fileLog();
    const pad = 'x'.repeat(200);
    for (let n = 0; n < 3_000; n++) logger.info({ n, pad }, 'request');
    await new Promise<void>((r) => logger.flush(() => r()));
    const got = lines(file);
    expect(got.map((l) => l['n'])).toEqual(Array.from({ length: 3_000 }, (_, n) => n));
    expect(got.every((l) => l['pad'] === pad)).toBe(true);
    dest.end();
    await new Promise<void>((r) => dest.once('close', r));
  });

  it('lines still gathered when the process exits are written', () => {
    dir = mkdtempSync(join(tmpdir(), 'valet-log-'));
    const file = join(dir, 'out.log');
    const script = join(dir, 'exit.mts');
    const log = join(dirname(fileURLToPath(import.meta.url)), '../../gateway/log.ts');
    writeFileSync(
      script,
      `import { openSync } from 'node:fs';
       import { createLogger, logDestination } from ${JSON.stringify(log)};
       const logger = createLogger(logDestination(openSync(${JSON.stringify(file)}, 'a')));
       for (let n = 0; n < 5; n++) logger.info({ n }, 'request');
       process.exit(3);`,
    );
    const r = spawnSync(process.execPath, ['--import', 'tsx', script], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(3);
    expect(lines(file).map((l) => l['n'])).toEqual([0, 1, 2, 3, 4]);
  });

  it('writes to a file at once, with no thread-pool round trip: a text handed over is in the file when the call returns', () => {
    const { file, dest, logger } = fileLog();
    const pad = 'x'.repeat(300);
    // Past 8 KiB of gathered lines the text is handed over, and (a file) written before info() returns.
    for (let n = 0; n < 40; n++) logger.info({ n, pad }, 'request');
    const written = lines(file);
    expect(written.length).toBeGreaterThanOrEqual(20);
    expect(written.map((l) => l['n'])).toEqual(Array.from({ length: written.length }, (_, n) => n));
    dest.end();
  });

  it('writes at once to files and devices that are not terminals; not to pipes or sockets, whose reader may stall', async () => {
    dir = mkdtempSync(join(tmpdir(), 'valet-log-'));
    const file = openSync(join(dir, 'f'), 'a');
    const devNull = openSync('/dev/null', 'w');
    try {
      expect(writesAtOnce(file)).toBe(true);
      expect(writesAtOnce(devNull)).toBe(true);
    } finally {
      closeSync(file);
      closeSync(devNull);
    }
    expect(writesAtOnce(987_654)).toBe(false); // not open: written off the event loop, the careful way
    const cat = spawn('cat', [], { stdio: ['pipe', 'ignore', 'ignore'] });
    try {
      expect(writesAtOnce((cat.stdin as unknown as { _handle: { fd: number } })._handle.fd)).toBe(false);
    } finally {
      cat.kill();
    }
    const server = createServer(() => undefined).listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    const client: Socket = connect((server.address() as { port: number }).port, '127.0.0.1');
    await new Promise((r) => client.once('connect', r));
    try {
      expect(writesAtOnce((client as unknown as { _handle: { fd: number } })._handle.fd)).toBe(false);
    } finally {
      client.destroy();
      server.close();
    }
  });

  it.skipIf(spawnSync('script', ['--version']).status !== 0)('not at once to a terminal (util-linux `script` gives the child one)', () => {
    const log = join(dirname(fileURLToPath(import.meta.url)), '../../gateway/log.ts');
    const code = `import { writesAtOnce } from ${JSON.stringify(log)}; process.stdout.write('tty=' + writesAtOnce(1) + String.fromCharCode(10));`;
    dir = mkdtempSync(join(tmpdir(), 'valet-log-'));
    const script = join(dir, 'tty.mts');
    writeFileSync(script, code);
    const r = spawnSync('script', ['-qec', `${JSON.stringify(process.execPath)} --import tsx ${JSON.stringify(script)}`, '/dev/null'], { encoding: 'utf8', timeout: 30_000 });
    expect(r.stdout).toContain('tty=false');
    // The same process with stdout a file: written at once.
    const out = join(dir, 'out');
    const f = spawnSync('sh', ['-c', `${JSON.stringify(process.execPath)} --import tsx ${JSON.stringify(script)} > ${JSON.stringify(out)}`], { encoding: 'utf8', timeout: 30_000 });
    expect(f.status).toBe(0);
    expect(readFileSync(out, 'utf8')).toContain('tty=true');
  });

  it('to a piped stdout, the lines still gathered when the process exits arrive, and a reader that is gone stops nothing', () => {
    dir = mkdtempSync(join(tmpdir(), 'valet-log-'));
    const script = join(dir, 'exit.mts');
    const log = join(dirname(fileURLToPath(import.meta.url)), '../../gateway/log.ts');
    writeFileSync(
      script,
      `import { createLogger, logDestination } from ${JSON.stringify(log)};
       const logger = createLogger(logDestination(1));
       for (let n = 0; n < 500; n++) logger.info({ n }, 'request');
       setTimeout(() => { for (let n = 500; n < 505; n++) logger.info({ n }, 'request'); process.exit(3); }, 300);`,
    );
    const r = spawnSync(process.execPath, ['--import', 'tsx', script], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(3);
    const got = r.stdout.split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { n: number }).n);
    expect(got).toEqual(Array.from({ length: 505 }, (_, n) => n));
    // A reader that closed the pipe before the lines go: EPIPE is swallowed, and the process goes on and exits as it chooses (3).
    const closed = spawnSync('bash', ['-c', `${JSON.stringify(process.execPath)} --import tsx ${JSON.stringify(script)} | (exec 0<&-; sleep 1); echo "status \${PIPESTATUS[0]}"`], { encoding: 'utf8', timeout: 30_000 });
    expect(closed.stdout).toContain('status 3');
  });

  it('through a pipe, thousands of lines arrive whole and in order (written off the event loop)', async () => {
    dir = mkdtempSync(join(tmpdir(), 'valet-log-'));
    const file = join(dir, 'out.log');
    const out = openSync(file, 'a');
    const cat = spawn('cat', [], { stdio: ['pipe', out, 'ignore'] });
    closeSync(out);
    const exited = new Promise((r) => cat.once('exit', r));
    const dest = logDestination((cat.stdin as unknown as { _handle: { fd: number } })._handle.fd);
    const logger = createLogger(dest);
    const pad = 'y'.repeat(200);
    for (let n = 0; n < 3_000; n++) logger.info({ n, pad }, 'request');
    await new Promise<void>((r) => logger.flush(() => r()));
    dest.end();
    await new Promise<void>((r) => dest.once('close', r));
    cat.stdin?.destroy();
    await exited;
    const got = lines(file);
    expect(got.map((l) => l['n'])).toEqual(Array.from({ length: 3_000 }, (_, n) => n));
    expect(got.every((l) => l['pad'] === pad)).toBe(true);
  });
});
