import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { BoundCounter, BoundHistogram, type CounterSeries, type HistogramSeries } from './bound-metrics.js';
import type { AuditRecord, Effect } from '../types.js';

/**
 * The gateway's Prometheus metrics. Labels are bounded sets (configured upstreams, three decisions,
 * HTTP status codes, error codes, the price table's model names); agent and user ids are never
 * labels, because their number is unbounded and they belong in the audit log. LLM spend is
 * labelled by tenant, the unit chargeback is done by (tenants are an organisation's customers or
 * departments, a set it configures).
 */
export interface Metrics {
  readonly registry: Registry;
  /** Called once per finished request with its audit record. */
  request(rec: AuditRecord): void;
  /** Seconds one policy decision took. */
  policyEvaluation(seconds: number): void;
  /** Seconds a request waited, before forwarding, for its decision row to be durable. */
  auditWait(seconds: number): void;
  /** Seconds one audit transaction took in the writer (its inserts and its fsync). */
  auditCommit(seconds: number): void;
  /** A data-plane connection closed as it was accepted: too many in total, or from one address. */
  connectionRefused(reason: 'max_connections' | 'max_connections_per_client'): void;
  /** A request the rules in shadow mode would have decided otherwise than the enforced ones. */
  shadowDisagreement(enforced: Effect, shadow: Effect): void;
  /** What an LLM call used: tokens by kind and their cost; `model` is the price table's name ('' when it has none). */
  llm(upstream: string, model: string, tenant: string | null, tokens: Readonly<Record<'input' | 'cached' | 'cache_write' | 'output' | 'reasoning', number>>, cost: number): void;
}

export interface MetricsSources {
  /** Configured upstream names; any other first path segment is counted as `(unknown)`. */
  readonly upstreams: ReadonlySet<string>;
  /** Audit rows queued and not yet written. */
  readonly auditQueue: () => number;
  /** Approvals waiting for a human, when the approvals module is present. */
  readonly pendingApprovals?: () => Promise<number>;
}

export function createMetrics(sources: MetricsSources): Metrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'valet_process_' });
  // The request path's metrics: a series bound once per label set, updated without prom-client's
  // per-call label handling (see bound-metrics.ts); the registry still writes them out.
  const requests = new BoundCounter(
    'valet_requests_total',
    'Requests answered by the data plane, by upstream, policy decision, status and error code.',
    ['upstream', 'decision', 'status', 'code'],
    registry,
  );
  const duration = new BoundHistogram(
    'valet_request_duration_seconds',
    'Time from receiving a request to its end (whole response sent), by upstream and decision.',
    ['upstream', 'decision'],
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registry,
  );
  const policy = new BoundHistogram(
    'valet_policy_evaluation_seconds',
    'Time one policy decision took (rules, conditions; not context lookups).',
    [],
    [0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005],
    registry,
  ).series();
  // Durable before forward: the wait a request sees, and the transactions (one fsync each) behind it.
  // The difference between the two is the hand-off between threads and queueing behind a commit.
  const auditBuckets = [0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];
  const auditWait = new BoundHistogram(
    'valet_audit_durable_wait_seconds',
    'Time a request waited, before being forwarded, until its audit decision row was committed and fsynced.',
    [],
    auditBuckets,
    registry,
  ).series();
  const auditCommit = new BoundHistogram(
    'valet_audit_commit_seconds',
    'Time one audit log transaction took in the writer, fsync included; the count is the number of commits (fsyncs).',
    [],
    auditBuckets,
    registry,
  ).series();
  new Gauge({
    name: 'valet_audit_queue_depth',
    help: 'Audit rows queued in memory and not yet written to the database.',
    registers: [registry],
    collect() {
      this.set(sources.auditQueue());
    },
  });
  if (sources.pendingApprovals !== undefined) {
    const pending = sources.pendingApprovals;
    new Gauge({
      name: 'valet_approvals_pending',
      help: 'Escalated requests waiting for a human decision.',
      registers: [registry],
      async collect() {
        this.set(await pending());
      },
    });
  }
  // Series looked up by one string key. The label sets are bounded (see above), so these maps are too.
  const counters = new Map<string, CounterSeries>();
  const timers = new Map<string, HistogramSeries>();
  const refused = new Counter({
    name: 'valet_connections_refused_total',
    help: 'Data-plane connections closed as they were accepted, by the cap that refused them (gateway.max_connections, gateway.max_connections_per_client).',
    labelNames: ['reason'],
    registers: [registry],
  });
  const llmTokens = new Counter({
    name: 'valet_llm_tokens_total',
    help: 'Tokens LLM calls used, by upstream, model (the price table\'s name; "(unpriced)" for models it lacks), tenant and kind (input, cached, cache_write, output, reasoning).',
    labelNames: ['upstream', 'model', 'tenant', 'kind'],
    registers: [registry],
  });
  const llmCost = new Counter({
    name: 'valet_llm_cost_total',
    help: 'What LLM calls cost, in the price table\'s currency (USD unless overridden), by upstream, model and tenant.',
    labelNames: ['upstream', 'model', 'tenant'],
    registers: [registry],
  });
  const shadow = new Counter({
    name: 'valet_policy_shadow_disagreements_total',
    help: 'Requests the rules in shadow mode (mode: shadow) would have decided otherwise than the enforced rules, by the enforced and the shadow effect.',
    labelNames: ['enforced', 'shadow'],
    registers: [registry],
  });
  return {
    registry,
    connectionRefused: (reason) => refused.inc({ reason }),
    shadowDisagreement: (enforced, s) => shadow.inc({ enforced, shadow: s }),
    llm(upstream, model, tenant, tokens, cost) {
      const labels = { upstream, model: model === '' ? '(unpriced)' : model, tenant: tenant ?? '' };
      for (const [kind, n] of Object.entries(tokens)) if (n > 0) llmTokens.inc({ ...labels, kind }, n);
      if (cost > 0) llmCost.inc(labels, cost);
    },
    request(rec) {
      const upstream = rec.upstream !== null && sources.upstreams.has(rec.upstream) ? rec.upstream : '(unknown)';
      const decision = rec.decision ?? 'none';
      const code = rec.errorCode ?? '';
      const key = `${upstream}\u0000${decision}`;
      const countKey = `${key}\u0000${rec.status}\u0000${code}`;
      let counter = counters.get(countKey);
      if (counter === undefined) counters.set(countKey, (counter = requests.series({ upstream, decision, status: String(rec.status), code })));
      counter.inc();
      let timer = timers.get(key);
      if (timer === undefined) timers.set(key, (timer = duration.series({ upstream, decision })));
      timer.observe(rec.durationMs / 1000);
    },
    policyEvaluation(seconds) {
      policy.observe(seconds);
    },
    auditWait(seconds) {
      auditWait.observe(seconds);
    },
    auditCommit(seconds) {
      auditCommit.observe(seconds);
    },
  };
}
