import { randomUUID } from 'node:crypto';
import { createServer, STATUS_CODES, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import type { DestinationStream, Logger } from 'pino';
import { openAuditDatabase } from './audit/store.js';
import { createAuditWriter, type AuditWriter } from './audit/writer.js';
import { createTokenVerifier } from './auth/verify.js';
import { loadConfig } from './config/load.js';
import type { Config, Environment } from './config/types.js';
import { ValetError } from './errors.js';
import { createLogger } from './log.js';
import { memoryCounterStore, memoryHistoryStore } from './policy/counters.js';
import { createPolicyHolder, type PolicyHolder } from './policy/reload.js';
import { createForwarder } from './proxy/forward.js';
import { envSecretSource } from './secrets/env.js';
import { createPipeline, newAuditRecord } from './server/pipeline.js';

export interface GatewayOptions {
  configDir: string;
  dataDir: string;
  port?: number | undefined;
  host?: string | undefined;
  environment?: Environment | undefined;
  /** Where log lines go (stdout by default); tests pass a sink. */
  logDestination?: DestinationStream | undefined;
  env?: NodeJS.ProcessEnv | undefined;
  /** Reload the policy when files in the config directory change. */
  watch?: boolean | undefined;
}

export interface RunningGateway {
  readonly config: Config;
  readonly server: Server;
  readonly port: number;
  readonly url: string;
  readonly logger: Logger;
  /** The audit writer; `flush()` writes queued rows now. */
  readonly audit: AuditWriter;
  /** The policy in force; `reload()` recompiles it (also on SIGHUP and, with `watch`, on file change). */
  readonly policies: PolicyHolder;
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
  const loadOptions = { port: options.port, host: options.host, environment: options.environment };
  const config = loadConfig(options.configDir, loadOptions);
  const env = options.env ?? process.env;
  const verifyToken = createTokenVerifier(config.issuers, dataDir, env);
  const stores = { counters: memoryCounterStore(), history: memoryHistoryStore() };
  const policies = createPolicyHolder(config, loadOptions, stores, logger);
  if (options.watch) policies.watch();
  const secrets = envSecretSource([...config.upstreams.values()].map((u) => u.credential.secret), env);
  if (secrets.missing.length > 0) {
    logger.warn({ missing: secrets.missing }, 'upstream credentials not set; requests to those upstreams are refused (503)');
  }
  const db = openAuditDatabase(dataDir);
  const audit = createAuditWriter(db, { logger });
  const forwarder = createForwarder(config.upstreams.values());
  let draining = false;
  const handle = createPipeline({ config, verifyToken, policy: policies.current, secrets, forwarder, audit, logger, draining: () => draining });

  let inFlight = 0;
  let idle: (() => void) | undefined;
  const server = createServer(
    { maxHeaderSize: config.gateway.maxHeaderBytes, keepAliveTimeout: 5_000, headersTimeout: 30_000, requestTimeout: 0 },
    (req, res) => {
      inFlight++;
      handle(req, res)
        .catch((err: unknown) => logger.error({ err }, 'request handler failed'))
        .finally(() => {
          inFlight--;
          if (draining && inFlight === 0) idle?.();
        });
    },
  );
  // Requests Node's parser refuses never reach the pipeline; they are answered and audited here.
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    const requestId = randomUUID();
    const e = new ValetError(err.code === 'HPE_HEADER_OVERFLOW' ? 'VALET_ERR_HEADERS_TOO_LARGE' : 'VALET_ERR_BAD_REQUEST');
    if (err.code !== 'ECONNRESET' && socket.writable) {
      const body = JSON.stringify({ error: { code: e.code, message: e.message, request_id: requestId } });
      socket.end(
        `HTTP/1.1 ${e.status} ${STATUS_CODES[e.status]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
          `x-request-id: ${requestId}\r\nconnection: close\r\n\r\n${body}`,
      );
      audit.record({ ...newAuditRecord(requestId, '-', ''), status: e.status, errorCode: e.code, reason: err.code ?? null });
    } else {
      socket.destroy();
    }
    logger.info({ reqId: requestId, code: err.code }, 'client error');
  });

  await new Promise<void>((resolveListen, reject) => {
    server.once('error', reject);
    server.listen(config.gateway.listen.port, config.gateway.listen.host, () => {
      server.off('error', reject);
      resolveListen();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const host = config.gateway.listen.host.includes(':') ? `[${config.gateway.listen.host}]` : config.gateway.listen.host;
  logger.info(
    { port, host: config.gateway.listen.host, environment: config.gateway.environment, policyVersion: config.version, upstreams: [...config.upstreams.keys()] },
    'valet listening',
  );

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      draining = true;
      policies.close();
      const closed = new Promise<void>((r) => server.close(() => r()));
      server.closeIdleConnections();
      if (inFlight > 0) {
        await Promise.race([
          new Promise<void>((r) => {
            idle = r;
          }),
          new Promise<void>((r) => setTimeout(r, config.gateway.shutdownGraceMs).unref()),
        ]);
      }
      server.closeAllConnections();
      // Requests cut off at the end of the grace period still write their audit rows.
      if (inFlight > 0) await new Promise<void>((r) => {
        idle = r;
        setTimeout(r, 1_000).unref();
      });
      await closed;
      await forwarder.close();
      audit.close();
      db.close();
      logger.info({}, 'valet stopped');
      await new Promise<void>((r) => logger.flush(() => r()));
    })());

  return { config, server, port, url: `http://${host}:${port}`, logger, audit, policies, close };
}
