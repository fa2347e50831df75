import { spawnSync } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger, LOG_FLUSH_MS, logDestination } from '../../gateway/log.js';
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

describe('log destination', () => {
  it('writes a few lines within LOG_FLUSH_MS although they fill no buffer, and everything on flush', async () => {
    dir = mkdtempSync(join(tmpdir(), 'valet-log-'));
    const file = join(dir, 'out.log');
    const fd = openSync(file, 'a');
    const dest = logDestination(fd);
    const logger = createLogger(dest);
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
    dir = mkdtempSync(join(tmpdir(), 'valet-log-'));
    const file = join(dir, 'out.log');
    const dest = logDestination(openSync(file, 'a'));
    const logger = createLogger(dest);
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
});
