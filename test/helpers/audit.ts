import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import pino from 'pino';
import type { AuditHead } from '../../gateway/audit/port.js';
import { startPgAuditWriter } from '../../gateway/audit/postgres/writer.js';
import { urlSchema } from '../../gateway/postgres.js';
import { AuditCore } from '../../gateway/audit/sqlite/core.js';
import { requestId } from '../../gateway/audit/ids.js';
import { AUDIT_FILE } from '../../gateway/audit/sqlite/store.js';
import { newAuditRecord } from '../../gateway/server/pipeline.js';
import type { AuditRecord } from '../../gateway/types.js';
import { backendEnv, deploymentQuery } from './backends.js';

/** A temporary data directory with a writer core on it (no gateway). */
export interface AuditFixture {
  readonly dir: string;
  readonly core: AuditCore;
  /** A second connection, for reading and for tampering behind the writer's back. */
  raw(): Database.Database;
  cleanup(): void;
}

export function auditFixture(): AuditFixture {
  const dir = mkdtempSync(join(tmpdir(), 'valet-audit-'));
  const core = new AuditCore(dir);
  const opened: Database.Database[] = [];
  return {
    dir,
    core,
    raw() {
      const db = new Database(join(dir, AUDIT_FILE));
      opened.push(db);
      return db;
    },
    cleanup() {
      for (const db of opened) if (db.open) db.close();
      if (core.db.open) core.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A plausible record; `o` overrides. */
export function record(o: Partial<AuditRecord> = {}): AuditRecord {
  return {
    ...newAuditRecord(requestId(), 'POST', '/v1/charges'),
    agent: 'agent-1',
    tenant: 'acme',
    upstream: 'stripe',
    decision: 'allow',
    rule: 'allow-charges',
    reason: 'charges are fine',
    policyVersion: 'sha256:0123',
    ...o,
  };
}

/** Writes `n` forwarded requests (decision, then outcome) and `refused` refused ones; returns their records. */
export function writeMix(core: AuditCore, n: number, refused = 0, o: Partial<AuditRecord> = {}): AuditRecord[] {
  const forwarded = Array.from({ length: n }, () => record(o));
  core.apply(forwarded.map((rec) => ({ op: 'decision' as const, rec })));
  const done = forwarded.map((rec) => ({ ...rec, status: 200, upstreamStatus: 200, durationMs: 12.5, bytesOut: 321 }));
  const denied = Array.from({ length: refused }, () => record({ ...o, decision: 'deny', rule: 'no-refunds', status: 403, errorCode: 'VALET_ERR_POLICY_DENIED' }));
  core.apply([...done.map((rec) => ({ op: 'final' as const, rec })), ...denied.map((rec) => ({ op: 'final' as const, rec }))]);
  return [...done, ...denied];
}

/**
 * An audit log on the backend the test run uses (helpers/backends.ts): the data directory's SQLite
 * database, or the deployment's PostgreSQL schema. CLI commands given `VALET_DATA: dir` read it.
 */
export interface AuditDeployment {
  readonly dir: string;
  /** As {@link writeMix}: `n` forwarded requests (decision, then outcome) and `refused` refused ones. */
  writeMix(n: number, refused?: number, o?: Partial<AuditRecord>): Promise<AuditRecord[]>;
  /** The chain head now. */
  head(): Promise<AuditHead>;
  /** One SQL statement behind the writer's back (the same text runs on both engines); the rows it returns. */
  exec(sql: string): Promise<Record<string, unknown>[]>;
  /** Stops writing (the log stays, for other processes to read). */
  stop(): Promise<void>;
  cleanup(): Promise<void>;
}

export async function auditDeployment(): Promise<AuditDeployment> {
  const dir = mkdtempSync(join(tmpdir(), 'valet-audit-'));
  const url = backendEnv(dir)['VALET_POSTGRES_URL'];
  if (url === undefined) {
    const fx = auditFixture();
    rmSync(dir, { recursive: true, force: true });
    const raw = fx.raw();
    return {
      dir: fx.dir,
      writeMix: async (n, refused, o) => writeMix(fx.core, n, refused, o),
      head: async () => ({ seq: fx.core.head.seq, hash: fx.core.head.hash.toString('hex') }),
      async exec(sql) {
        const st = raw.prepare(sql);
        return st.reader ? (st.all() as Record<string, unknown>[]) : (st.run(), []);
      },
      async stop() {
        if (fx.core.db.open) fx.core.close();
      },
      async cleanup() {
        fx.cleanup();
      },
    };
  }
  const writer = await startPgAuditWriter({ settings: { url, schema: urlSchema(url) }, instance: 'fixture', logger: pino({ level: 'silent' }) });
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (!stopped) await writer.close();
    stopped = true;
  };
  return {
    dir,
    async writeMix(n, refused = 0, o = {}) {
      const forwarded = Array.from({ length: n }, () => record(o));
      await Promise.all(forwarded.map((rec) => writer.commit(rec)));
      const done = forwarded.map((rec) => ({ ...rec, status: 200, upstreamStatus: 200, durationMs: 12.5, bytesOut: 321 }));
      const denied = Array.from({ length: refused }, () => record({ ...o, decision: 'deny', rule: 'no-refunds', status: 403, errorCode: 'VALET_ERR_POLICY_DENIED' }));
      for (const rec of [...done, ...denied]) writer.record(rec);
      await writer.flush();
      return [...done, ...denied];
    },
    head: async () => writer.head,
    exec: (sql) => deploymentQuery(dir, sql),
    stop,
    async cleanup() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
