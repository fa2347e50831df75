import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { AuditCore } from '../../gateway/audit/sqlite/core.js';
import { requestId } from '../../gateway/audit/ids.js';
import { AUDIT_FILE } from '../../gateway/audit/sqlite/store.js';
import { newAuditRecord } from '../../gateway/server/pipeline.js';
import type { AuditRecord } from '../../gateway/types.js';

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
