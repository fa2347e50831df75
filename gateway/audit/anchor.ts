import { spawn } from 'node:child_process';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { closeSync, existsSync, fdatasyncSync, fstatSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { request } from 'undici';
import type { Environment } from '../config/types.js';
import { secretVariable } from '../secrets/variable.js';
import type { Anchor, AuditHead } from './port.js';

/**
 * Anchoring: the hash chain alone proves that rows were not changed *in the middle*; someone able
 * to write the database could still cut off its newest rows (the chain that remains is intact), or
 * rewrite everything and recompute every hash. An anchor is the chain head (seq, hash, time) kept
 * somewhere else. `valet audit verify` then checks that the chain still reaches every anchored seq
 * with the same hash there: truncation shows as a head behind an anchor, rewriting as a different
 * hash at an anchored seq.
 *
 * The gateway appends an anchor to `<data>/audit-anchors.ndjson` (fsynced) every
 * `gateway.audit.anchor.interval_s` when the head moved, and at shutdown. That file sits next to
 * the database, so it protects against accidents and careless edits, not against someone who can
 * rewrite both: for that, sign anchors (`VALET_AUDIT_ANCHOR_KEY`: each line carries an
 * HMAC-SHA256 that verify checks, so anchors cannot be forged without the key) and/or copy each
 * anchor off the machine as it is made (`anchor.command` gets the JSON line on stdin,
 * `anchor.url` gets it POSTed), to storage the gateway's host cannot change.
 */
export const ANCHOR_FILE = 'audit-anchors.ndjson';
export const ANCHOR_KEY_ENV = 'VALET_AUDIT_ANCHOR_KEY';

export interface AnchorSettings {
  readonly intervalMs: number;
  readonly command: readonly string[] | undefined;
  readonly url: string | undefined;
}

const payload = (a: { seq: number; hash: string; at: number }): string => JSON.stringify({ seq: a.seq, hash: a.hash, at: a.at });
const mac = (key: string, text: string): string => createHmac('sha256', key).update(text).digest('hex');

/** One anchor line: `{"seq":..,"hash":"..","at":..}` plus `"mac"` when a key is given. */
export function anchorLine(a: { seq: number; hash: string; at: number }, key: string | undefined): string {
  const text = payload(a);
  return key === undefined || key === '' ? text : `${text.slice(0, -1)},"mac":"${mac(key, text)}"}`;
}

export interface AnchorRead {
  anchors: Anchor[];
  /** Lines that are not anchors, or whose signature does not verify. */
  problems: string[];
}

/** Reads an anchor file; with `key`, every line must carry a valid HMAC. */
export function readAnchors(file: string, key: string | undefined): AnchorRead {
  const anchors: Anchor[] = [];
  const problems: string[] = [];
  readFileSync(file, 'utf8')
    .split('\n')
    .forEach((line, i) => {
      if (line.trim() === '') return;
      const where = `${file}:${i + 1}`;
      let a: { seq?: unknown; hash?: unknown; at?: unknown; mac?: unknown };
      try {
        a = JSON.parse(line) as typeof a;
      } catch {
        problems.push(`${where}: not a JSON anchor`);
        return;
      }
      if (typeof a.seq !== 'number' || typeof a.hash !== 'string' || typeof a.at !== 'number' || !/^[0-9a-f]{64}$/.test(a.hash)) {
        problems.push(`${where}: not an anchor (needs seq, hash, at)`);
        return;
      }
      const anchor = { seq: a.seq, hash: a.hash, at: a.at, source: where };
      if (key !== undefined && key !== '') {
        const want = Buffer.from(mac(key, payload(anchor)), 'hex');
        const got = typeof a.mac === 'string' && /^[0-9a-f]{64}$/.test(a.mac) ? Buffer.from(a.mac, 'hex') : Buffer.alloc(0);
        if (got.length !== want.length || !timingSafeEqual(got, want)) {
          problems.push(`${where}: the anchor's signature does not verify with ${ANCHOR_KEY_ENV} (the anchor was forged or edited)`);
          return;
        }
      }
      anchors.push(anchor);
    });
  return { anchors, problems };
}

export interface Anchorer {
  /** Anchors the current head now (if it moved since the last anchor). */
  anchor(): Promise<void>;
  /** Stops the timer; anchors the final head. */
  close(): Promise<void>;
}

export function createAnchorer(o: {
  dataDir: string;
  head: () => AuditHead;
  settings: AnchorSettings;
  env: NodeJS.ProcessEnv;
  /** Production refuses example and low-entropy anchor keys (development when absent). */
  environment?: Environment;
  logger: Logger;
}): Anchorer {
  const file = join(o.dataDir, ANCHOR_FILE);
  const key = secretVariable(o.env, ANCHOR_KEY_ENV, o.environment ?? 'development')?.value;
  let last = lastAnchoredSeq(file);
  let running: Promise<void> = Promise.resolve();

  const write = async (): Promise<void> => {
    const h = o.head();
    if (h.seq === 0 || h.seq <= last) return;
    const line = anchorLine({ seq: h.seq, hash: h.hash, at: Date.now() }, key);
    try {
      const fd = openSync(file, 'a', 0o600);
      try {
        writeSync(fd, `${line}\n`);
        fdatasyncSync(fd);
      } finally {
        closeSync(fd);
      }
      last = h.seq;
    } catch (err) {
      o.logger.error({ err: { code: (err as NodeJS.ErrnoException).code, message: (err as Error).message }, file }, 'audit anchor not written');
      return;
    }
    await Promise.all([o.settings.command && toCommand(o.settings.command, line, o.logger), o.settings.url && toUrl(o.settings.url, line, o.logger)]);
  };
  const anchor = (): Promise<void> => (running = running.then(write));
  const timer = setInterval(() => void anchor(), o.settings.intervalMs);
  timer.unref();
  return {
    anchor,
    async close() {
      clearInterval(timer);
      await anchor();
    },
  };
}

/** The seq of the file's last anchor, reading only its tail (the file grows for as long as the log lives). */
function lastAnchoredSeq(file: string): number {
  if (!existsSync(file)) return 0;
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    const len = Math.min(size, 4096);
    const buf = Buffer.alloc(len);
    readSync(fd, buf, 0, len, size - len);
    const lines = buf.toString('utf8').split('\n').filter((l) => l.trim() !== '');
    for (let i = lines.length - 1; i >= 0; i--) {
      const m = /^\{"seq":(\d+),/.exec(lines[i] as string);
      if (m) return Number(m[1]);
    }
    return 0;
  } finally {
    closeSync(fd);
  }
}

function toCommand(argv: readonly string[], line: string, logger: Logger): Promise<void> {
  return new Promise((resolve) => {
    const child = spawn(argv[0] as string, argv.slice(1), { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.stderr?.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-500)));
    child.on('error', (err) => {
      clearTimeout(timer);
      logger.error({ command: argv[0], message: err.message }, 'audit anchor command failed');
      resolve();
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code !== 0) logger.error({ command: argv[0], code, stderr }, 'audit anchor command failed');
      resolve();
    });
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(`${line}\n`);
  });
}

async function toUrl(url: string, line: string, logger: Logger): Promise<void> {
  try {
    const res = await request(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: line, headersTimeout: 10_000, bodyTimeout: 10_000 });
    await res.body.dump();
    if (res.statusCode >= 300) logger.error({ url, status: res.statusCode }, 'audit anchor not accepted');
  } catch (err) {
    logger.error({ url, message: (err as Error).message }, 'audit anchor not sent');
  }
}
