import { credentialRoutes, connectPages } from './admin/credentials.js';
import { CredentialService } from './credentials/service.js';
import { startStdioBridge, type StdioBridge } from './mcp/stdio.js';
import type { SecretSource } from './secrets/source.js';
import { memoryGrants } from './secrets/grants.js';
import type { Notifier } from './approvals/notify.js';
import { createServer, STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { resolve } from 'node:path';
import type { DestinationStream, Logger } from 'pino';
import { createAnchorer } from './audit/anchor.js';
import { openAuditBackend, postgresSettings } from './audit/backend.js';
import { requestId as newRequestId } from './audit/ids.js';
import type { AuditLog, AuditWriter } from './audit/port.js';
import { retentionCutoffs } from './audit/retention.js';
import { startPgAuditWriter } from './audit/postgres/writer.js';
import { startAuditWriter, writerMode } from './audit/sqlite/writer.js';
import { usableCpus } from './cpus.js';
import { missingNodeFlags, NODE_FLAGS } from './node-flags.js';
import { createTokenVerifier } from './auth/verify.js';
import { secretNames } from './config/credential.js';
import { loadConfig } from './config/load.js';
import { DEFAULT_AUDIT, DEFAULT_LISTENER, DEFAULT_LLM, type Config, type Environment, type ListenerSettings } from './config/types.js';
import { LlmMetering } from './llm/metering.js';
import { budgetAlerts } from './llm/alerts.js';
import { auditRoutes } from './admin/audit.js';
import { dashboardAssets, findDashboard } from './admin/assets.js';
import { insightRoutes } from './admin/insights.js';
import { usageRoutes } from './admin/usage.js';
import { createMetrics, type Metrics } from './admin/metrics.js';
import { policyRoutes } from './admin/policy.js';
import { approvalPages, approvalRoutes } from './admin/approvals.js';
import { chatHooks } from './admin/chat.js';
import { adminProbes, adminRoutes } from './admin/routes.js';
import { secretRoutes } from './admin/secrets.js';
import { createAdminServer } from './admin/server.js';
import { ValetError, type ErrorCode } from './errors.js';
import { createLogger } from './log.js';
import { openCounterBackend } from './policy/counters-backend.js';
import { instanceId } from './instance.js';
import { privateDir, tightenDataDir } from './private-files.js';
import { createPolicyHolder, type PolicyHolder } from './policy/reload.js';
import { historyKey } from './policy/compile.js';
import type { HistoryStore } from './policy/counters.js';
import { encodeFacts, type FactsRecorder } from './policy/facts.js';
import { loadTokenizer } from './llm/tokens.js';
import { createForwarder } from './proxy/forward.js';
import { createSecretSources, DEFAULT_SOURCES } from './secrets/sources.js';
import type { SecretStore } from './secrets/port.js';
import { createApprovals } from './approvals/setup.js';
import { createPipeline, newAuditRecord } from './server/pipeline.js';
import { acceptHttp2, type Http2Sessions } from './server/listener.js';

export interface GatewayOptions {
  configDir: string;
  dataDir: string;
  port?: number | undefined;
  host?: string | undefined;
  /** The admin listener's port (0: any free port). */
  adminPort?: number | undefined;
  /** The admin listener's address (`--admin-host` / `VALET_ADMIN_HOST`; 0.0.0.0 in a container). */
  adminHost?: string | undefined;
  /** `gateway.admin.public_url` (`VALET_ADMIN_PUBLIC_URL`): where browsers reach the admin plane. */
  adminPublicUrl?: string | undefined;
  environment?: Environment | undefined;
  /** Where log lines go (stdout by default); tests pass a sink. */
  logDestination?: DestinationStream | undefined;
  env?: NodeJS.ProcessEnv | undefined;
  /** Reload the policy when files in the config directory change. */
  watch?: boolean | undefined;
  /** Where the audit writer runs, overriding `gateway.audit.writer` (the benchmark compares both). */
  auditWriter?: 'worker' | 'inline' | undefined;
  /** A candidate policy evaluated in shadow beside the one in force (`--shadow`, `VALET_SHADOW_CONFIG`): a directory, or `git:REF[:PATH]`. */
  shadowConfigDir?: string | undefined;
}

export interface RunningGateway {
  readonly config: Config;
  readonly server: Server;
  readonly port: number;
  readonly url: string;
  /** Upstreams served at their root on a listener of their own (`upstreams[].listen`), by name. */
  readonly upstreamListeners: ReadonlyMap<string, { readonly port: number; readonly url: string }>;
  /** The admin plane (API, probes), on its own listener. */
  readonly admin: { readonly server: Server; readonly port: number; readonly url: string };
  readonly logger: Logger;
  /** The audit writer; `flush()` writes queued rows now. */
  readonly audit: AuditWriter;
  /** The audit log's read side (what the admin API and dashboard read). */
  readonly auditLog: AuditLog;
  /** The Prometheus metrics the admin listener serves at `/metrics`. */
  readonly metrics: Metrics;
  /** The policy in force; `reload()` recompiles it (also on SIGHUP and, with `watch`, on file change). */
  readonly policies: PolicyHolder;
  /** The encrypted secret store, when `store` is one of `gateway.secrets.sources`. */
  readonly secretStore: SecretStore | undefined;
  /** Stops accepting, drains in-flight requests (up to the grace period), flushes the audit log. */
  close(): Promise<void>;
}

/**
 * The composition root: loads and freezes config, builds every concrete module, and starts the
 * data-plane listener. Any configuration problem throws before a socket is opened.
 */
export async function startGateway(options: GatewayOptions): Promise<RunningGateway> {
  const logger = createLogger(options.logDestination);
  const dataDir = resolve(options.dataDir);
  const loadOptions = { port: options.port, host: options.host, adminPort: options.adminPort, adminHost: options.adminHost, adminPublicUrl: options.adminPublicUrl, environment: options.environment };
  let config = loadConfig(options.configDir, loadOptions);
  const env = options.env ?? process.env;
  // Before anything is created in it: the data directory and what an earlier run left there
  // (keys, databases, their -wal/-shm files) become private to the gateway's user.
  privateDir(dataDir);
  tightenDataDir(dataDir);
  const verifyToken = createTokenVerifier(config.issuers, dataDir, env, { environment: config.gateway.environment });
  // Opening the store checks the master key: a wrong or missing one stops start-up here.
  const secretSources = await createSecretSources({
    settings: config.gateway.secrets?.sources ?? DEFAULT_SOURCES,
    backend: config.gateway.secrets,
    names: [...config.upstreams.values()].flatMap((u) => [...secretNames(u.credential), ...Object.values(u.stdio?.env ?? {})]),
    dataDir,
    env,
    environment: config.gateway.environment,
    log: logger,
  });
  // Stdio MCP servers: launched behind a loopback bridge each; the upstream then points at it, with its token as credential.
  const bridges = await startStdioBridges(config, secretSources.source, logger).catch(async (err: unknown) => {
    await secretSources.close();
    throw err;
  });
  if (bridges.size > 0) config = { ...config, upstreams: new Map([...config.upstreams].map(([n, u]) => [n, bridges.has(n) ? { ...u, origin: (bridges.get(n) as StdioBridge).origin } : u])) };
  const secrets: SecretSource = bridges.size === 0 ? secretSources.source : { get: (name, tenant) => (name.startsWith('stdio:') ? bridges.get(name.slice(6))?.token : secretSources.source.get(name, tenant)) };
  let adminUrl: string | undefined;
  // Set once approvals exist (below): a broken credential is told through their notification channels.
  let notify: Notifier | undefined;
  // Obtained credentials (token endpoints, users' accounts) are sealed in the secret store next to the static ones.
  const credentials = new CredentialService({
    upstreams: config.upstreams.values(),
    grants: secretSources.store?.grants ?? memoryGrants(),
    secrets,
    publicUrl: () => config.gateway.admin.publicUrl ?? adminUrl,
    onError: (problem) => logger.error({ problem }, 'credential provider: token request failed'),
    onBroken: (b) => {
      logger.error({ upstream: b.upstream, tenant: b.tenant, user: b.user, problem: b.problem }, 'credential broken: calls are refused until it is reconnected or replaced');
      notify?.notify({ event: 'credential.broken', ...b });
    },
  });
  // Counters and history outlive the process: in counters.db, or in Redis shared by a fleet.
  const counterBackend = openCounterBackend(config.gateway.counters, env, dataDir, logger, config.gateway.policy?.sessions?.ttlMs);
  const stores = { counters: counterBackend.counters, history: counterBackend.history, sessions: counterBackend.sessions, connections: credentials };
  const policies = createPolicyHolder(config, loadOptions, stores, logger, options.shadowConfigDir === undefined || options.shadowConfigDir.startsWith('git:') ? options.shadowConfigDir : resolve(options.shadowConfigDir));
  if (options.watch) policies.watch();
  // The read side (admin API, dashboard); opened first, it creates and migrates the database the writer then opens.
  const auditSettings = config.gateway.audit ?? DEFAULT_AUDIT;
  const postgres = postgresSettings(auditSettings, env);
  const auditLog = await openAuditBackend({ dataDir, create: true, postgres });
  // Its gauges read the audit writer and the approvals service, built below, only when scraped.
  const metrics = createMetrics({ upstreams: new Set(config.upstreams.keys()), auditQueue: () => audit.pending, pendingApprovals: () => approvals.service.pending() });
  const onCommit = (seconds: number): void => metrics.auditCommit(seconds);
  const auditWriter = postgres !== undefined ? undefined : (options.auditWriter ?? writerMode(auditSettings.writer, auditSettings.durability, usableCpus()));
  const audit = await (postgres !== undefined
    ? startPgAuditWriter({ settings: postgres, instance: auditSettings.postgres.instance ?? instanceId(dataDir, env), logger, failOpen: auditSettings.failOpen, durability: auditSettings.durability, onCommit, factsKey: secretSources.masterKey })
    : startAuditWriter({
    dataDir,
    logger,
    failOpen: auditSettings.failOpen,
    busyTimeoutMs: auditSettings.busyTimeoutMs,
    mode: auditWriter,
    durability: auditSettings.durability,
    onCommit,
    factsKey: secretSources.masterKey,
  })).catch(async (err: unknown) => {
    policies.close();
    counterBackend.close();
    await secretSources.close();
    await auditLog.close();
    throw err;
  });
  if (auditSettings.durability === 'async') logger.warn({}, 'gateway.audit.durability is async: calls are forwarded before their audit row is written; a crash loses the rows not yet written');
  if (auditSettings.failOpen) logger.warn({}, 'gateway.audit.fail_open is set: requests are forwarded even when their audit record cannot be written');
  const anchorer = createAnchorer({ dataDir, head: () => audit.head, settings: auditSettings.anchor, env, environment: config.gateway.environment, logger });
  const prune = (): void => {
    const cutoffs = retentionCutoffs(auditSettings);
    if (cutoffs === undefined) return;
    audit.prune(cutoffs).then(
      (r) => r.rows > 0 && logger.info({ rows: r.rows, compacted: r.compacted }, 'audit retention: old rows deleted'),
      (err: unknown) => logger.error({ message: (err as Error).message }, 'audit retention: prune failed'),
    );
  };
  const pruneTimer = setInterval(prune, 3_600_000);
  pruneTimer.unref();
  setImmediate(prune);
  const forwarder = createForwarder(config.upstreams.values());
  let draining = false;
  const approvals = await createApprovals({ settings: config.gateway.approvals, dataDir, env, environment: config.gateway.environment, logger, adminUrl: () => adminUrl });
  notify = approvals.notifier;
  // LLM calls are metered at the shipped prices with gateway.llm's overrides; budgets passing 80 % and 100 % are announced.
  const metering = new LlmMetering(config.gateway.llm ?? DEFAULT_LLM);
  // The tokenizer's tables (~20 MB of heap) only where an upstream is metered, loaded before the first call.
  if ([...config.upstreams.values()].some((u) => u.llm !== undefined)) loadTokenizer();
  // What each decision was made on, sealed into its audit row for `valet policy replay`: under the master key, or not at all.
  const facts = secretSources.masterKey === undefined ? undefined : factsRecorder(counterBackend.history, logger);
  if (facts === undefined) logger.warn({}, 'no master key in use (gateway.secrets.sources has no store): request facts are not recorded, so valet policy replay cannot re-decide this traffic');
  const alerts = budgetAlerts((n) => {
    logger.warn({ budget: n.budget, counter: n.counter, threshold: n.threshold, used: n.used, limit: n.limit }, 'budget threshold reached');
    approvals.notifier.notify(n);
  });
  const handle = createPipeline({
    config,
    verifyToken,
    policy: policies.current,
    secrets,
    credentials,
    forwarder,
    audit,
    logger,
    metrics,
    approvals: approvals.service,
    draining: () => draining,
    metering,
    budgetAlerts: alerts,
    ...(facts !== undefined && { facts }),
  });

  let inFlight = 0;
  let idle: (() => void) | undefined;
  const listener = config.gateway.listener ?? DEFAULT_LISTENER;
  /** The HTTP/2 side of every data-plane server, for shutdown. */
  const http2Sides: Http2Sessions[] = [];
  // One pair for every request: a handler's end costs one promise reaction, not a closure and two chained promises.
  const requestDone = (): void => {
    inFlight--;
    if (draining && inFlight === 0) idle?.();
  };
  const requestFailed = (err: unknown): void => {
    logger.error({ err }, 'request handler failed');
    requestDone();
  };
  /**
   * A data-plane server: the main one, or an upstream's own (`routed`: it serves that upstream at its
   * root). HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on the same port, into the same pipeline.
   */
  const dataServer = (routed?: string): Server => {
    const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
      inFlight++;
      handle(req, res, routed).then(requestDone, requestFailed);
    };
    const server = createServer(
      {
        maxHeaderSize: config.gateway.maxHeaderBytes,
        keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
        headersTimeout: listener.headersTimeoutMs,
        // Node checks the headers deadline on this tick (30 s by default, which would let a 10 s deadline
        // run to 40 s); its cost is one walk of the open connections.
        connectionsCheckingInterval: Math.max(50, Math.min(1_000, Math.floor(listener.headersTimeoutMs / 4))),
        // Body deadlines are the pipeline's (gateway/server/body.ts): Node's request timeout can only
        // answer on the raw socket, not through the pipeline that is already handling the request.
        requestTimeout: 0,
      },
      onRequest,
    );
    http2Sides.push(
      acceptHttp2(
        server,
        {
          maxHeaderBytes: config.gateway.maxHeaderBytes,
          headersTimeoutMs: listener.headersTimeoutMs,
          keepAliveTimeoutMs: KEEP_ALIVE_TIMEOUT_MS,
          maxConcurrentStreams: MAX_CONCURRENT_STREAMS,
        },
        onRequest,
      ),
    );
    limitConnections(server, listener, metrics);
    // Requests Node's parser refuses never reach the pipeline; they are answered and audited here.
    server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
      // The headers deadline on a connection that never sent a byte: no request to answer or audit.
      if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT' && socket.bytesRead === 0) {
        socket.destroy();
        return;
      }
      const requestId = newRequestId();
      const e = new ValetError(CLIENT_ERRORS[err.code ?? ''] ?? 'VALET_ERR_BAD_REQUEST');
      if (err.code !== 'ECONNRESET' && socket.writable) {
        const body = JSON.stringify({ error: { code: e.code, message: e.message, request_id: requestId } });
        socket.end(
          `HTTP/1.1 ${e.status} ${STATUS_CODES[e.status]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
            `x-request-id: ${requestId}\r\nvalet-request-id: ${requestId}\r\nconnection: close\r\n\r\n${body}`,
        );
        audit.record({ ...newAuditRecord(requestId, '-', ''), status: e.status, errorCode: e.code, reason: err.code ?? null });
      } else {
        socket.destroy();
      }
      logger.info({ reqId: requestId, code: err.code }, 'client error');
    });
    return server;
  };
  const server = dataServer();
  const upstreamServers = new Map([...config.upstreams.values()].flatMap((u) => (u.listen === undefined ? [] : [[u.name, dataServer(u.name)] as const])));

  const adminDeps = { audit: auditLog, policies, metrics, auditPending: () => audit.pending, auditWriterBusy: () => audit.busy === true,
    countersProblem: counterBackend.problem,
    approvalsProblem: () => approvals.problem(),
    secretsProblem: () => secretSources.store?.problem?.(),
  };
  const adminServer = createAdminServer({
    verify: createTokenVerifier(config.issuers, dataDir, env, { audience: config.gateway.admin.audience, environment: config.gateway.environment }),
    routes: [
      ...adminRoutes(adminDeps),
      ...auditRoutes(auditLog),
      ...policyRoutes(adminDeps),
      ...insightRoutes(auditLog),
      ...usageRoutes({ audit: auditLog, budgets: () => policies.config().budgets, currency: metering.prices.currency }),
      ...(secretSources.store ? secretRoutes(secretSources.store) : []),
      ...approvalRoutes(approvals.service),
      ...credentialRoutes({ upstreams: config.upstreams, credentials, secrets: secretSources.store ?? secrets }),
    ],
    probes: adminProbes(adminDeps),
    hooks: chatHooks({ service: approvals.service, chat: approvals.chat, logger }),
    assets: ((approvalPage, connectPage, dashboard) => async (path: string, req: IncomingMessage, url: URL) =>
      (await approvalPage(path)) ?? (await connectPage(path, req, url)) ?? dashboard(path))(approvalPages(approvals.service), connectPages(credentials), dashboardAssets(findDashboard())),
    logger,
  });
  const port = await listen(server, config.gateway.listen);
  const upstreamListeners = new Map<string, { port: number; url: string }>();
  const adminPort = await (async () => {
    for (const [name, s] of upstreamServers) {
      const own = config.upstreams.get(name)?.listen;
      const at = { host: own?.host ?? config.gateway.listen.host, port: own?.port ?? 0 };
      const p = await listen(s, at);
      upstreamListeners.set(name, { port: p, url: `http://${urlHost(at.host)}:${p}` });
    }
    return listen(adminServer, config.gateway.admin.listen);
  })().catch(async (err: unknown) => {
    for (const s of [server, ...upstreamServers.values()]) if (s.listening) await new Promise((r) => s.close(r));
    throw err;
  });
  const host = urlHost(config.gateway.listen.host);
  adminUrl = `http://${urlHost(config.gateway.admin.listen.host)}:${adminPort}`;
  const missingFlags = missingNodeFlags();
  if (missingFlags.length > 0) {
    logger.warn({ missing: missingFlags }, `node was started without ${missingFlags.join(' ')}: requests may stall after idle periods and, on one CPU, during garbage collection (npm start, the valet command and the Docker image pass ${NODE_FLAGS.join(' ')}; docs/performance.md)`);
  }
  logger.info(
    {
      port,
      host: config.gateway.listen.host,
      adminPort,
      adminHost: config.gateway.admin.listen.host,
      environment: config.gateway.environment,
      policyVersion: config.version,
      upstreams: [...config.upstreams.keys()],
      ...(auditWriter !== undefined && { auditWriter: auditWriter === 'worker' ? 'thread' : 'inline' }),
      ...(upstreamListeners.size > 0 && { upstreamPorts: Object.fromEntries([...upstreamListeners].map(([n, l]) => [n, l.port])) }),
    },
    'valet listening',
  );

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      draining = true;
      // Held requests are answered (503) and their approvals aborted: nobody will be waiting for them later.
      const heldAnswered = approvals.service.close();
      policies.close();
      const dataServers = [server, ...upstreamServers.values()];
      const closed = Promise.all(dataServers.map((s) => new Promise<void>((r) => s.close(() => r()))));
      const adminClosed = new Promise<void>((r) => adminServer.close(() => r()));
      adminServer.closeAllConnections();
      for (const s of dataServers) s.closeIdleConnections();
      // HTTP/2 sessions get GOAWAY: no new requests, those in flight finish within the grace period.
      for (const h of http2Sides) h.drain();
      if (inFlight > 0) {
        await Promise.race([
          new Promise<void>((r) => {
            idle = r;
          }),
          new Promise<void>((r) => setTimeout(r, config.gateway.shutdownGraceMs).unref()),
        ]);
      }
      for (const s of dataServers) s.closeAllConnections();
      for (const h of http2Sides) h.destroyAll();
      // Requests cut off at the end of the grace period still write their audit rows.
      if (inFlight > 0) await new Promise<void>((r) => {
        idle = r;
        setTimeout(r, 1_000).unref();
      });
      await closed;
      await adminClosed;
      await forwarder.close();
      await Promise.all([...bridges.values()].map((b) => b.close()));
      await heldAnswered;
      await approvals.close();
      clearInterval(pruneTimer);
      await audit.close();
      await anchorer.close();
      await auditLog.close();
      counterBackend.close();
      await secretSources.close();
      logger.info({}, 'valet stopped');
      await new Promise<void>((r) => logger.flush(() => r()));
    })());

  const admin = { server: adminServer, port: adminPort, url: `http://${urlHost(config.gateway.admin.listen.host)}:${adminPort}` };
  return { config, server, port, url: `http://${host}:${port}`, upstreamListeners, admin, logger, audit, auditLog, metrics, policies, secretStore: secretSources.store, close };
}

/**
 * Encodes the facts of each decision once its call is over; the audit writer seals them under the
 * master key's facts key. With a history store in the process, the history summary a decision read
 * lazily (it is not in the input) is recorded too, taken as the decision saw it: the call itself is
 * recorded in the history right after.
 */
function factsRecorder(history: HistoryStore, logger: Logger): FactsRecorder {
  const local = history.shared === true ? undefined : history;
  return {
    capture(requestId, input, decision, argsRead) {
      const failed = (err: unknown): null => {
        // A request is not refused for want of its replay facts; the message is the encoder's, never a fact.
        logger.error({ reqId: requestId, message: (err as Error).message }, 'could not encode the request facts; the audit row has none');
        return null;
      };
      let summary: ReturnType<HistoryStore['summary']> | undefined;
      try {
        // Now: the call itself joins the history right after its decision.
        summary = input.history === undefined && local !== undefined ? local.summary(historyKey(input.identity, input.facts), input.now) : undefined;
      } catch (err) {
        return () => failed(err);
      }
      return () => {
        try {
          return encodeFacts(input, decision, { argsRead, history: summary instanceof Promise ? undefined : summary });
        } catch (err) {
          return failed(err);
        }
      };
    },
  };
}

/** How long an idle keep-alive connection (HTTP/1) or session (HTTP/2) is kept open. */
const KEEP_ALIVE_TIMEOUT_MS = 5_000;
/** Requests one HTTP/2 session may have in flight at once (an agent's sessions count against max_connections_per_client). */
const MAX_CONCURRENT_STREAMS = 100;

/** What Node's parser errors mean to an agent; every other one is a malformed request. */
const CLIENT_ERRORS: Readonly<Record<string, ErrorCode>> = {
  HPE_HEADER_OVERFLOW: 'VALET_ERR_HEADERS_TOO_LARGE',
  // Node names the headers deadline so (the request deadline, its other use, is off).
  ERR_HTTP_REQUEST_TIMEOUT: 'VALET_ERR_REQUEST_TIMEOUT',
};

/**
 * Caps open data-plane connections in total (Node drops them on accept) and per remote address
 * (dropped here before Node's HTTP layer sees them): refusing costs no parsing and no answer, so a
 * flood of connections cannot crowd out other agents. Behind a proxy every agent shares its address.
 */
function limitConnections(server: Server, settings: ListenerSettings, metrics: Metrics): void {
  server.maxConnections = settings.maxConnections;
  server.on('drop', () => metrics.connectionRefused('max_connections'));
  const open = new Map<string, number>();
  server.prependListener('connection', (socket: Socket) => {
    const address = clientAddress(socket.remoteAddress);
    const n = (open.get(address) ?? 0) + 1;
    if (n > settings.maxConnectionsPerClient) {
      socket.destroy();
      metrics.connectionRefused('max_connections_per_client');
      return;
    }
    open.set(address, n);
    socket.once('close', () => {
      const left = (open.get(address) ?? 1) - 1;
      if (left === 0) open.delete(address);
      else open.set(address, left);
    });
  });
}

/** One key per client: an IPv4 client reached over a dual-stack socket counts as its IPv4 address. */
function clientAddress(address: string | undefined): string {
  if (address === undefined) return '';
  return address.startsWith('::ffff:') ? address.slice(7) : address;
}

function listen(server: Server, at: { readonly host: string; readonly port: number }): Promise<number> {
  return new Promise((resolveListen, reject) => {
    server.once('error', reject);
    server.listen(at.port, at.host, () => {
      server.off('error', reject);
      resolveListen((server.address() as AddressInfo).port);
    });
  });
}

const urlHost = (host: string): string => (host.includes(':') ? `[${host}]` : host);

/**
 * Starts a bridge for each stdio MCP upstream: its child processes get only the environment
 * configured for them, from shared secrets (a missing one stops start-up: the server would run
 * without the credential it needs).
 */
async function startStdioBridges(config: Config, secrets: SecretSource, logger: Logger): Promise<Map<string, StdioBridge>> {
  const bridges = new Map<string, StdioBridge>();
  try {
    for (const u of config.upstreams.values()) {
      if (u.stdio === undefined) continue;
      const env: Record<string, string> = {};
      for (const [variable, secret] of Object.entries(u.stdio.env)) {
        const value = secrets.get(secret, undefined);
        if (value === undefined) throw new ValetError('VALET_ERR_CREDENTIAL_UNAVAILABLE', `upstream ${u.name}: no source has the secret ${secret} for its server's ${variable}`);
        env[variable] = value;
      }
      bridges.set(u.name, await startStdioBridge(u.name, { command: u.stdio.command, args: u.stdio.args, env, ...(u.stdio.cwd !== undefined && { cwd: u.stdio.cwd }) }, { logger }));
    }
  } catch (err) {
    await Promise.all([...bridges.values()].map((b) => b.close()));
    throw err;
  }
  return bridges;
}
