import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { cefLine, syslogMessage, type SyslogOptions } from './export.js';
import type { AuditLog, AuditRow, CompletedFilter } from './port.js';

/**
 * Continuous shipping of the audit log to a syslog collector.
 *
 * Rows are shipped in the order they were *completed* — the hash chain's order of `outcome` and
 * `record` events — so each request is sent once, with its outcome, even when it finished long
 * after requests that started later. The cursor is the chain seq of the last event delivered; it
 * is written to the cursor file (atomically: temporary file, fsync, rename) once a batch counts as
 * delivered, so a restarted shipper resumes where it stopped. Delivery is at least once: batches
 * sent on a connection that then broke are sent again after reconnecting.
 *
 * Transports: TCP with octet-counting framing (RFC 6587 §3.4.1: `MSG-LEN SP SYSLOG-MSG`),
 * reconnecting with exponential backoff (0.5 s doubling to 30 s). TCP syslog has no
 * application-level acknowledgement, so a batch counts as delivered once its connection stayed open
 * for a moment (`confirmMs`) after the kernel took every byte. UDP: one message per datagram
 * (RFC 5426); UDP itself may drop messages, which no cursor can detect.
 */
export interface ShipOptions {
  to: URL;
  format: 'syslog' | 'cef';
  cursorFile?: string | undefined;
  filter?: CompletedFilter;
  syslog?: SyslogOptions;
  /** Poll interval while following (ms). */
  intervalMs?: number;
  /** Ship what is there, then stop (otherwise follow the log until `signal` aborts). */
  once?: boolean;
  batchSize?: number;
  /** TCP: how long a connection must stay open after a batch before the batch counts as delivered (ms, default 1000). */
  confirmMs?: number;
  signal?: AbortSignal;
  log?: (msg: string) => void;
}

export interface ShipResult {
  shipped: number;
  cursor: number;
}

export function readCursor(file: string | undefined): number {
  if (file === undefined || !existsSync(file)) return 0;
  const v = JSON.parse(readFileSync(file, 'utf8')) as { seq?: unknown };
  if (typeof v.seq !== 'number' || !Number.isSafeInteger(v.seq) || v.seq < 0) throw new Error(`${file}: not a shipping cursor`);
  return v.seq;
}

export function writeCursor(file: string, seq: number): void {
  const tmp = `${file}.tmp`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, `${JSON.stringify({ seq, at: new Date().toISOString() })}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
}

interface Transport {
  /** Sends every message; resolves when the transport accepted all of them (over TCP: the kernel took every byte). */
  send(messages: readonly string[]): Promise<void>;
  /**
   * Which connection the last send used; it changes when a broken connection is replaced. Batches
   * sent on a connection that has since broken may not have been read by the collector.
   */
  readonly connection: number;
  /** The connection the last send used is still open. */
  readonly alive: boolean;
  /** Closes gracefully: resolves once the collector closed its side too (or after a timeout). */
  close(): Promise<void>;
}

function udpTransport(to: URL): Transport {
  const host = to.hostname.replace(/^\[|\]$/g, '');
  const socket: UdpSocket = createSocket(host.includes(':') ? 'udp6' : 'udp4');
  const port = Number(to.port);
  return {
    async send(messages) {
      for (const m of messages) {
        // Kept within one datagram: longer messages are cut (RFC 5426 §3.2 allows truncation).
        const buf = Buffer.from(m, 'utf8').subarray(0, 65_000);
        await new Promise<void>((resolve, reject) => socket.send(buf, port, host, (err) => (err ? reject(err) : resolve())));
      }
    },
    connection: 1,
    alive: true,
    close: () => new Promise<void>((r) => socket.close(() => r())),
  };
}

function tcpTransport(to: URL, log: (m: string) => void, signal: AbortSignal | undefined): Transport {
  const host = to.hostname.replace(/^\[|\]$/g, '');
  const port = Number(to.port);
  let socket: Socket | undefined;
  let connection = 0;
  let alive = false;
  let backoff = 500;
  const pause = async (): Promise<void> => {
    await new Promise((r) => setTimeout(r, backoff));
    backoff = Math.min(30_000, backoff * 2);
  };
  const open = async (): Promise<Socket> => {
    for (;;) {
      if (signal?.aborted) throw new Error('stopped');
      try {
        const s = await new Promise<Socket>((resolve, reject) => {
          const c = connect({ host, port });
          c.once('connect', () => {
            c.off('error', reject);
            resolve(c);
          });
          c.once('error', reject);
        });
        s.setNoDelay(true);
        s.on('error', () => s.destroy());
        s.on('close', () => {
          if (socket === s) {
            socket = undefined;
            alive = false;
          }
        });
        // A collector never speaks; when it closes its side, so do we (and the batches are in doubt).
        s.on('end', () => s.destroy());
        s.resume();
        connection++;
        alive = true;
        return s;
      } catch (err) {
        log(`cannot connect to ${host}:${port} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); retrying in ${backoff} ms`);
        await pause();
      }
    }
  };
  return {
    async send(messages) {
      const framed = messages.map((m) => `${Buffer.byteLength(m, 'utf8')} ${m}`).join('');
      for (;;) {
        socket ??= await open();
        const s = socket;
        try {
          await new Promise<void>((resolve, reject) => {
            const onClose = (): void => reject(new Error('connection closed'));
            s.once('close', onClose);
            s.write(framed, (err) => {
              s.off('close', onClose);
              if (err) reject(err);
              else resolve();
            });
          });
          backoff = 500;
          return;
        } catch (err) {
          log(`connection to ${host}:${port} lost (${(err as Error).message}); reconnecting`);
          s.destroy();
          await pause();
        }
      }
    },
    get connection() {
      return connection;
    },
    get alive() {
      return alive;
    },
    close: () =>
      new Promise<void>((r) => {
        const s = socket;
        if (s === undefined) return r();
        const t = setTimeout(() => {
          s.destroy();
          r();
        }, 2_000);
        s.once('close', () => {
          clearTimeout(t);
          r();
        });
        s.end();
      }),
  };
}

/**
 * Ships until stopped (or, with `once`, until everything is shipped and confirmed).
 *
 * Delivery over TCP: a write that completes only means the kernel took the bytes. A batch counts
 * as delivered once its connection stayed open `confirmMs` after the write; only then does the
 * cursor file move past it. When the connection breaks, everything not yet confirmed is sent
 * again on the next connection (at least once: the collector may see a message twice, never zero
 * times, unless it lost what it had read).
 */
export async function ship(audit: AuditLog, o: ShipOptions): Promise<ShipResult> {
  const log = o.log ?? (() => undefined);
  const protocol = o.to.protocol;
  if ((protocol !== 'tcp:' && protocol !== 'udp:') || o.to.hostname === '' || o.to.port === '') {
    throw new Error('--to must be tcp://HOST:PORT or udp://HOST:PORT');
  }
  const tcp = protocol === 'tcp:';
  const transport = tcp ? tcpTransport(o.to, log, o.signal) : udpTransport(o.to);
  const confirmMs = tcp ? (o.confirmMs ?? 1_000) : 0;
  const batchSize = o.batchSize ?? 500;
  const format = (r: AuditRow): string => (o.format === 'cef' ? syslogMessage(r, o.syslog, cefLine(r)) : syslogMessage(r, o.syslog));
  let confirmed = readCursor(o.cursorFile);
  let cursor = confirmed;
  let shipped = 0;
  /** Batches sent and not yet confirmed: the cursor after each, when, and on which connection. */
  let unconfirmed: { seq: number; at: number; connection: number; rows: number }[] = [];

  const settle = (): void => {
    if (unconfirmed.length > 0 && (!transport.alive || unconfirmed.some((u) => u.connection !== transport.connection))) {
      // The connection they went out on broke: the collector may not have read them. Send them again.
      const lost = unconfirmed.reduce((n, u) => n + u.rows, 0);
      log(`${lost} row(s) sent on a connection that broke are sent again`);
      shipped -= lost;
      cursor = confirmed;
      unconfirmed = [];
      return;
    }
    const now = Date.now();
    let moved = false;
    while (unconfirmed.length > 0 && now - unconfirmed[0]!.at >= confirmMs) {
      confirmed = unconfirmed.shift()!.seq;
      moved = true;
    }
    if (unconfirmed.length === 0 && cursor > confirmed) {
      confirmed = cursor; // skipped past events that are not shipped
      moved = true;
    }
    if (moved && o.cursorFile !== undefined) writeCursor(o.cursorFile, confirmed);
  };
  const wait = (ms: number): Promise<void> =>
    new Promise<void>((r) => {
      const t = setTimeout(r, ms);
      o.signal?.addEventListener('abort', () => {
        clearTimeout(t);
        r();
      });
    });

  try {
    for (;;) {
      if (o.signal?.aborted) break;
      settle();
      const { head, rows: batch } = await audit.completedAfter(cursor, batchSize, o.filter);
      if (batch.length > 0) {
        await transport.send(batch.map((b) => format(b.row)));
        cursor = (batch[batch.length - 1] as { seq: number }).seq;
        unconfirmed.push({ seq: cursor, at: Date.now(), connection: transport.connection, rows: batch.length });
        shipped += batch.length;
        if (batch.length === batchSize) continue;
      } else if (head > cursor) {
        // Nothing (left) to ship up to the head: move past events the filter or kind excludes.
        cursor = head;
      }
      if (o.once && unconfirmed.length === 0) {
        settle();
        break;
      }
      await wait(o.once ? Math.max(10, confirmMs) : (o.intervalMs ?? 1_000));
    }
  } finally {
    await transport.close();
  }
  return { shipped, cursor: confirmed };
}
