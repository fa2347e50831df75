/**
 * `valet policy replay`: a real gateway records a known mix of decisions (some before request facts
 * were recorded), then a candidate that changes known rules decides them again; the counts, the
 * groups, the filters, the thresholds' exit codes and the Markdown report are checked exactly. Runs
 * on SQLite and, under VALET_TEST_BACKENDS=shared, on PostgreSQL (the helpers choose).
 */
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import Database from 'better-sqlite3';
import { parseBatchRef } from '../../gateway/audit/facts.js';
import { AUDIT_FILE } from '../../gateway/audit/sqlite/store.js';
import { SHARED_BACKENDS } from '../helpers/backends.js';
import type { ReplayReport } from '../../gateway/policy/replay.js';
import { runCli, type CliResult } from '../helpers/cli.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startFakeUpstream, type FakeUpstream } from '../helpers/upstream.js';
import { expectForwarded, json, send, STRIPE_TOOLS_YAML, STRIPE_SECRET, stripeUpstream } from './policy-support.js';

/** The rules in force while the traffic was recorded. */
const RECORDED_RULES = [
  { id: 'reads', upstream: 'stripe', methods: ['GET'], effect: 'allow' },
  { id: 'transfers', tools: ['stripe.create_transfer'], effect: 'allow' },
  { id: 'large-transfers', tools: ['stripe.create_transfer'], when: 'args.amount > 1000', effect: 'escalate', approval: { group: 'finance', mode: 'async' } },
  { id: 'no-huge-transfers', tools: ['stripe.create_transfer'], when: 'args.amount > 5000', effect: 'deny' },
];

/**
 * The candidate: reads only of the balance (customer lookups escalate), the approval threshold
 * raised to 2500, the deny renamed and moved to 8000, and no transfers for tenant globex.
 */
const CANDIDATE_RULES = [
  { id: 'reads', upstream: 'stripe', methods: ['GET'], paths: ['/v1/balance'], effect: 'allow' },
  { id: 'customer-lookups', tools: ['stripe.get_customer'], effect: 'escalate', approval: { group: 'privacy', mode: 'async' } },
  { id: 'transfers', tools: ['stripe.create_transfer'], effect: 'allow' },
  { id: 'large-transfers', tools: ['stripe.create_transfer'], when: 'args.amount > 2500', effect: 'escalate', approval: { group: 'finance', mode: 'async' } },
  { id: 'no-big-transfers', tools: ['stripe.create_transfer'], when: 'args.amount > 8000', effect: 'deny' },
  { id: 'globex-no-transfers', tools: ['stripe.create_transfer'], when: 'agent.tenant == "globex"', effect: 'deny' },
];

describe('valet policy replay', () => {
  let upstream: FakeUpstream;
  let gw: TestGateway;
  let candidate: string;
  let broken: string;
  /** Between the rows recorded without facts and those with. */
  let between: string;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    const options = { upstreams: [stripeUpstream(upstream.origin)], rules: RECORDED_RULES, files: { 'tools.yaml': STRIPE_TOOLS_YAML }, env: { STRIPE_KEY: STRIPE_SECRET } };
    // First without the secret store, so without a master key: these rows have no facts.
    const before = await startTestGateway({ ...options, gateway: { secrets: { sources: ['env'] } } });
    expect(before.logs.some((l) => l.includes('request facts are not recorded'))).toBe(true);
    const early = await before.token({ agent: 'agent-1', tenant: 'acme' });
    for (let i = 0; i < 2; i++) expectForwarded(await send(before, upstream, '/stripe/v1/balance', { token: early }));
    await before.close({ keep: true });
    await new Promise((r) => setTimeout(r, 5));
    between = new Date().toISOString();
    await new Promise((r) => setTimeout(r, 5));

    gw = await startTestGateway({ ...options, root: before.root });
    expect(gw.logs.some((l) => l.includes('request facts are not recorded'))).toBe(false);
    const acme = await gw.token({ agent: 'agent-1', tenant: 'acme' });
    const globex = await gw.token({ agent: 'agent-2', tenant: 'globex' });
    const transfer = (token: string, amount: number) => send(gw, upstream, '/stripe/v1/transfers', { token, method: 'POST', ...json({ amount, currency: 'usd' }) });
    for (let i = 0; i < 6; i++) expectForwarded(await send(gw, upstream, '/stripe/v1/balance', { token: acme }));
    for (let i = 1; i <= 4; i++) expectForwarded(await send(gw, upstream, `/stripe/v1/customers/cus_${i}`, { token: acme }));
    for (const amount of [100, 200, 500, 900]) expectForwarded(await transfer(acme, amount));
    expect((await transfer(acme, 2000)).status).toBe(202);
    expect((await transfer(acme, 3000)).status).toBe(202);
    expect((await transfer(acme, 9000)).status).toBe(403);
    for (let i = 0; i < 2; i++) expectForwarded(await send(gw, upstream, '/stripe/v1/balance', { token: globex }));
    expectForwarded(await transfer(globex, 700));
    // Refused before the rules ran: nothing to replay.
    expect((await send(gw, upstream, '/stripe/v1/balance', { token: 'not-a-token' })).status).toBe(401);
    const rows = await gw.waitForAudit(23);
    expect(rows).toHaveLength(23);
    // Sealed: no fact in the clear (amounts are in `args` only when a tool's audit_args keeps them).
    const withFacts = rows.filter((r) => r.facts !== null);
    expect(withFacts).toHaveLength(20);
    for (const r of withFacts) {
      // A reference to its line of the batch its commit sealed (gateway/audit/facts.ts, v2).
      expect(r.facts).toMatch(/^v2\.[1-9][0-9]*\.[0-9]+\.[A-Za-z0-9_-]{43}$/);
    }
    const batches = [...(await gw.gateway.auditLog.factsBatches([...new Set(withFacts.map((r) => parseBatchRef(r.facts as string)!.batchId))])).values()];
    expect(batches.length).toBeGreaterThan(0);
    for (const b of batches) {
      expect(b).toMatch(/^v2\.[0-9a-f]{16}\.[A-Za-z0-9_-]+$/);
      expect(Buffer.from(b.split('.')[2] as string, 'base64url').toString('latin1')).not.toContain('agent-1');
    }
    await gw.close({ keep: true });

    candidate = mkdtempSync(join(tmpdir(), 'valet-replay-candidate-'));
    cpSync(gw.configDir, candidate, { recursive: true });
    writeFileSync(join(candidate, 'rules.yaml'), stringify({ rules: CANDIDATE_RULES }));
    broken = mkdtempSync(join(tmpdir(), 'valet-replay-broken-'));
    cpSync(gw.configDir, broken, { recursive: true });
    writeFileSync(join(broken, 'rules.yaml'), stringify({ rules: [{ id: 'typo', upstream: 'stripe', when: 'args.amount >', effect: 'allow' }] }));
  }, 60_000);
  afterAll(async () => {
    await gw?.close();
    for (const dir of [gw?.root, candidate, broken]) if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
    await upstream?.close();
  });

  const replay = (...extra: string[]): Promise<CliResult> => runCli(['policy', 'replay', '--candidate', candidate, '--config', gw.configDir, '--data', gw.dataDir, ...extra]);
  const report = async (...extra: string[]): Promise<ReplayReport> => {
    const r = await replay('--format', 'json', ...extra);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    return JSON.parse(r.stdout) as ReplayReport;
  };

  it('counts exactly what the candidate changes, from what to what, grouped by rule, with examples', { timeout: 60_000 }, async () => {
    const r = await report();
    expect(r).toMatchObject({ considered: 23, replayed: 20, undecided: 1, changed: 6, widened: 1, rules_changed: 1, crossed: [] });
    expect(r.candidate).toMatch(/^sha256:/);
    expect(r.not_replayable).toEqual({ count: 2, reasons: [{ reason: expect.stringMatching(/^no facts recorded/), count: 2, example: expect.any(String) }] });
    expect(r.transitions).toEqual([
      { from: 'allow', to: 'escalate', count: 4 },
      { from: 'allow', to: 'deny', count: 1 },
      { from: 'escalate', to: 'allow', count: 1 },
    ]);
    expect(r.changes.map((g) => [g.from, g.to, g.count, g.examples.length])).toEqual([
      [{ effect: 'allow', rules: ['reads'] }, { effect: 'escalate', rules: ['customer-lookups'] }, 4, 3],
      [{ effect: 'allow', rules: ['transfers'] }, { effect: 'deny', rules: ['globex-no-transfers'] }, 1, 1],
      [{ effect: 'escalate', rules: ['large-transfers'] }, { effect: 'allow', rules: ['transfers'] }, 1, 1],
    ]);
    // Examples newest first: the last three customer lookups.
    expect(r.changes[0]?.examples.map((e) => e.path)).toEqual(['/v1/customers/cus_4', '/v1/customers/cus_3', '/v1/customers/cus_2']);
    expect(r.changes[0]?.examples[0]).toMatchObject({ agent: 'agent-1', tenant: 'acme', upstream: 'stripe', method: 'GET', tool: 'stripe.get_customer' });
    expect(r.changes[1]?.examples[0]).toMatchObject({ agent: 'agent-2', tenant: 'globex', method: 'POST', path: '/v1/transfers', tool: 'stripe.create_transfer' });
    expect(r.rule_changes.map((g) => [g.from, g.to, g.count])).toEqual([[{ effect: 'deny', rules: ['no-huge-transfers'] }, { effect: 'deny', rules: ['no-big-transfers'] }, 1]]);
  });

  it('filters by agent and by time, and stops at --limit', { timeout: 60_000 }, async () => {
    const agent2 = await report('--agent', 'agent-2');
    expect(agent2).toMatchObject({ considered: 3, replayed: 3, changed: 1, widened: 0, rules_changed: 0, undecided: 0, not_replayable: { count: 0, reasons: [] } });
    expect(agent2.transitions).toEqual([{ from: 'allow', to: 'deny', count: 1 }]);
    const recent = await report('--since', between);
    expect(recent).toMatchObject({ considered: 21, replayed: 20, undecided: 1, changed: 6, not_replayable: { count: 0 } });
    expect(recent.window.since).toBe(between);
    const upToThen = await report('--until', between);
    expect(upToThen).toMatchObject({ considered: 2, replayed: 0, not_replayable: { count: 2 } });
    const limited = await report('--limit', '5', '--tenant', 'acme');
    expect(limited).toMatchObject({ considered: 5, replayed: 5 });
  });

  it('exits 1 past a threshold, naming it; 0 within; 2 for a usage or candidate error', { timeout: 90_000 }, async () => {
    expect((await replay('--max-changed', '6', '--max-widened', '1')).code).toBe(0);
    const count = await replay('--max-changed', '5');
    expect(count.code).toBe(1);
    expect(count.stdout).toContain('FAILED: 6 changed, more than --max-changed 5');
    // 6 of 20 replayed is 30 %.
    expect((await replay('--max-changed', '30%')).code).toBe(0);
    const share = await replay('--max-changed', '25%');
    expect(share.code).toBe(1);
    expect(share.stdout).toContain('FAILED: 30 % changed, more than --max-changed 25%');
    const widened = await replay('--max-widened', '0', '--format', 'json');
    expect(widened.code).toBe(1);
    expect((JSON.parse(widened.stdout) as ReplayReport).crossed).toEqual(['1 newly allowed, more than --max-widened 0']);
    const usage = await replay('--max-changed', 'lots');
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain('--max-changed must be');
    const bad = await runCli(['policy', 'replay', '--candidate', broken, '--config', gw.configDir, '--data', gw.dataDir]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('invalid candidate configuration');
    expect(bad.stderr).toContain('rules.yaml');
    expect(bad.stdout).toBe('');
  });

  it('a row sealed under another master key is not replayable, and says why', { timeout: 60_000 }, async () => {
    const wrongKey = await runCli(['policy', 'replay', '--candidate', candidate, '--config', gw.configDir, '--data', gw.dataDir, '--agent', 'agent-2', '--format', 'json'], {
      env: { VALET_MASTER_KEY: Buffer.alloc(32, 7).toString('base64') },
    });
    expect(wrongKey.code).toBe(0);
    const r = JSON.parse(wrongKey.stdout) as ReplayReport;
    expect(r).toMatchObject({ considered: 3, replayed: 0, not_replayable: { count: 3 } });
    expect(r.not_replayable.reasons).toEqual([{ reason: expect.stringMatching(/^The request facts cannot be opened: sealed under master key [0-9a-f]{16}, not this one \([0-9a-f]{16}\)\.$/), count: 3, example: expect.any(String) }]);
  });

  // Tampers with a copy of the SQLite file; on PostgreSQL, audit-postgres.test.ts alters and deletes batches.
  it.skipIf(SHARED_BACKENDS)('a batch of sealed facts altered or deleted: its rows are not replayable, say why, and verify names them', { timeout: 60_000 }, async () => {
    for (const [change, reason, problem] of [
      ["UPDATE audit_facts SET sealed = substr(sealed, 1, 40) || (CASE substr(sealed, 41, 1) WHEN 'A' THEN 'B' ELSE 'A' END) || substr(sealed, 42)", /does not match the row's digest \(altered\)/, /batch \d+ was altered/],
      ['DELETE FROM audit_facts', /is missing \(deleted\)/, /batch \d+ is missing \(deleted\)/],
    ] as const) {
      const copy = mkdtempSync(join(tmpdir(), 'valet-replay-tampered-'));
      try {
        cpSync(gw.dataDir, copy, { recursive: true });
        const db = new Database(join(copy, AUDIT_FILE));
        db.exec(change);
        db.close();
        const r = await runCli(['policy', 'replay', '--candidate', candidate, '--config', gw.configDir, '--data', copy, '--format', 'json']);
        expect(r.code).toBe(0);
        const report = JSON.parse(r.stdout) as ReplayReport;
        expect(report).toMatchObject({ considered: 23, replayed: 0 });
        expect(report.not_replayable.reasons.find((x) => reason.test(x.reason))?.count).toBe(20);
        const v = await runCli(['audit', 'verify', '--config', gw.configDir, '--data', copy]);
        expect(v.code).toBe(1);
        expect(v.stdout + v.stderr).toMatch(problem);
      } finally {
        rmSync(copy, { recursive: true, force: true });
      }
    }
  });

  it('renders a Markdown report for a pull request', { timeout: 60_000 }, async () => {
    const r = await replay('--format', 'markdown', '--max-changed', '5', '--max-widened', '1');
    expect(r.code).toBe(1);
    const stable = r.stdout
      .replace(/sha256:[0-9a-f]+/g, 'sha256:<version>')
      .replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g, '<request-id>')
      .replace(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/g, '<time>');
    expect(stable).toMatchInlineSnapshot(`
      "## Policy replay: sha256:<version>

      Requests recorded from <time> to now, decided again by the candidate's rules.

      23 recorded request(s) considered, 20 replayed: 6 changed (30 %), 1 newly allowed; 1 decided by other rules with the same effect; 2 not replayable; 1 refused before the rules ran.

      | From | To | Requests |
      | --- | --- | ---: |
      | allow | escalate | 4 |
      | allow | deny | 1 |
      | escalate | allow | 1 |

      ### Changed

      <details>
      <summary><b>allow</b> (<code>reads</code>) → <b>escalate</b> (<code>customer-lookups</code>): 4 request(s)</summary>

      | Request | Time | Agent | Tenant | Method | Path | Tool |
      | --- | --- | --- | --- | --- | --- | --- |
      | <request-id> | <time> | agent-1 | acme | GET | /stripe/v1/customers/cus\\_4 | stripe.get\\_customer |
      | <request-id> | <time> | agent-1 | acme | GET | /stripe/v1/customers/cus\\_3 | stripe.get\\_customer |
      | <request-id> | <time> | agent-1 | acme | GET | /stripe/v1/customers/cus\\_2 | stripe.get\\_customer |

      </details>

      <details>
      <summary><b>allow</b> (<code>transfers</code>) → <b>deny</b> (<code>globex-no-transfers</code>): 1 request(s)</summary>

      | Request | Time | Agent | Tenant | Method | Path | Tool |
      | --- | --- | --- | --- | --- | --- | --- |
      | <request-id> | <time> | agent-2 | globex | POST | /stripe/v1/transfers | stripe.create\\_transfer |

      </details>

      <details>
      <summary><b>escalate</b> (<code>large-transfers</code>) → <b>allow</b> (<code>transfers</code>): 1 request(s)</summary>

      | Request | Time | Agent | Tenant | Method | Path | Tool |
      | --- | --- | --- | --- | --- | --- | --- |
      | <request-id> | <time> | agent-1 | acme | POST | /stripe/v1/transfers | stripe.create\\_transfer |

      </details>

      ### Same effect, other rules

      <details>
      <summary><b>deny</b> (<code>no-huge-transfers</code>) → <b>deny</b> (<code>no-big-transfers</code>): 1 request(s)</summary>

      | Request | Time | Agent | Tenant | Method | Path | Tool |
      | --- | --- | --- | --- | --- | --- | --- |
      | <request-id> | <time> | agent-1 | acme | POST | /stripe/v1/transfers | stripe.create\\_transfer |

      </details>

      ### Not replayable

      | Reason | Requests | Example |
      | --- | ---: | --- |
      | no facts recorded (written before facts were recorded, or by a gateway without a master key) | 2 | <request-id> |

      **Verdict:** ❌ FAILED: 6 changed, more than --max-changed 5
      "
    `);
  });
});
