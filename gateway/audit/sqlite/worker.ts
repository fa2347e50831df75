/**
 * The audit writer thread (node:worker_threads): runs the writer service (service.ts) on the
 * messages the request thread posts.
 */
import { writeFileSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { startWriterService } from './service.js';
import type { FromWriter, ToWriter, WriterInit } from '../protocol.js';

const port = parentPort;
if (port === null) throw new Error('the audit writer must run in a worker thread');

// Named, so that `top -H`, `ps -L` and the benchmark show this thread's CPU apart (Linux; elsewhere a no-op).
try {
  writeFileSync('/proc/thread-self/comm', 'valet-audit');
} catch {
  // not Linux
}

const handle = startWriterService(workerData as WriterInit, (m: FromWriter) => port.postMessage(m), () => port.close());
if (handle !== undefined) port.on('message', (m: ToWriter) => handle(m));
