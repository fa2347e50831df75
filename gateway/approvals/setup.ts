import type { Logger } from 'pino';
import { DEFAULT_APPROVAL_SETTINGS, type ApprovalSettings, type Environment } from '../config/types.js';
import { secretVariable } from '../secrets/variable.js';
import { ValetError } from '../errors.js';
import { createLinkSigner, loadLinkKey } from './links.js';
import { createNotifier, slackChannel, webhookChannel, type NotificationChannel, type Notifier } from './notify.js';
import type { ChatReceivers } from './chat.js';
import { createApprovalService, type ApprovalService } from './service.js';
import { openApprovalBackend } from './backend.js';
import { postgresUrlFor } from '../postgres.js';

export interface ApprovalsOptions {
  readonly settings: ApprovalSettings | undefined;
  readonly dataDir: string;
  readonly env: NodeJS.ProcessEnv;
  /** The gateway environment: production refuses example and low-entropy keys. */
  readonly environment: Environment;
  readonly logger: Logger;
  /** The admin plane's URL once it listens; links use `links.base_url` first. */
  readonly adminUrl: () => string | undefined;
}

export interface Approvals {
  readonly service: ApprovalService;
  readonly notifier: Notifier;
  /** Who may decide from chat (Slack buttons, the signed callback), with the secrets that authenticate them. */
  readonly chat: ChatReceivers;
  /** Why a shared store cannot serve now (for `/readyz`), or undefined. */
  problem(): string | undefined;
  /** After `service.close()` and the listeners have drained: stops notifications and closes the store. */
  close(): Promise<void>;
}

/**
 * Builds the approvals module from `gateway.approvals`: the store (see `backend.ts`; PostgreSQL
 * when `gateway.approvals.backend` or `VALET_POSTGRES_URL` says so), the
 * notification channels (secrets read from the environment now, so a missing one stops start-up),
 * the link signer, and the service; marks held approvals of an earlier process aborted.
 */
export async function createApprovals(o: ApprovalsOptions): Promise<Approvals> {
  const settings = o.settings ?? DEFAULT_APPROVAL_SETTINGS;
  const channels = notificationChannels(settings, o.env, o.environment);
  const chat = chatReceivers(settings, o.env, o.environment);
  const store = await openApprovalBackend({
    dataDir: o.dataDir,
    postgresUrl: postgresUrlFor('gateway.approvals', settings.backend, settings.postgres.url, o.env),
    env: o.env,
    onError: (problem) => o.logger.error({ problem }, 'approvals: PostgreSQL connection problem'),
  });
  try {
    const notifier = createNotifier(channels, { logger: o.logger });
    const service = createApprovalService({
      store,
      notifier,
      logger: o.logger,
      limits: { perAgent: settings.maxPendingPerAgent, perTenant: settings.maxPendingPerTenant },
      links: settings.links.enabled ? createLinkSigner(loadLinkKey(o.dataDir, o.env, o.environment)) : undefined,
      linkBase: () => settings.links.baseUrl ?? o.adminUrl(),
    });
    await service.start();
    return {
      service,
      notifier,
      chat,
      problem: () => store.problem?.(),
      async close() {
        await service.close();
        await notifier.close();
        await store.close();
      },
    };
  } catch (err) {
    await store.close();
    throw err;
  }
}

/** A variable's value, trimmed; a signing secret may come from a file (`NAME_FILE`) and is checked like every key. */
function fromEnv(env: NodeJS.ProcessEnv, environment: Environment, where: string, variable: string, what: string, key: boolean): string {
  const v = key ? secretVariable(env, variable, environment)?.value : env[variable];
  if (v === undefined || v.trim() === '' || /[\r\n\0]/.test(v)) {
    throw new ValetError('VALET_ERR_CONFIG', `${where}: the environment variable ${variable} (${what}) is not set`);
  }
  return v.trim();
}

/** The configured channels, with their URLs and signing secrets read from the environment. */
export function notificationChannels(settings: ApprovalSettings, env: NodeJS.ProcessEnv, environment: Environment = 'development'): NotificationChannel[] {
  return settings.channels.map((c, i) => {
    const name = `${c.type}[${i}]`;
    const where = `gateway.approvals.channels[${i}] (${c.type})`;
    const url = c.url ?? fromEnv(env, environment, where, c.urlEnv as string, 'its URL', false);
    if (!/^https?:\/\//.test(url)) throw new ValetError('VALET_ERR_CONFIG', `${where}: the URL in ${c.urlEnv} must start with http:// or https://`);
    const retry = { maxAttempts: c.maxAttempts, baseDelayMs: c.backoffMs, maxDelayMs: Math.max(c.backoffMs, 60_000) };
    if (c.type === 'slack') return slackChannel({ name, url, groups: c.groups, retry, buttons: c.signingSecretEnv !== undefined });
    return webhookChannel({ name, url, secret: fromEnv(env, environment, where, c.secretEnv as string, 'its signing secret', true), groups: c.groups, retry });
  });
}

/** Interactive Slack channels and the generic callback, with their secrets read from the environment. */
export function chatReceivers(settings: ApprovalSettings, env: NodeJS.ProcessEnv, environment: Environment = 'development'): ChatReceivers {
  const slack = settings.channels.flatMap((c, i) =>
    c.signingSecretEnv === undefined || c.approvers === undefined
      ? []
      : [{ secret: fromEnv(env, environment, `gateway.approvals.channels[${i}] (slack)`, c.signingSecretEnv, 'its Slack signing secret', true), approvers: c.approvers }],
  );
  const cb = settings.callback;
  const callback = cb === undefined ? undefined : { secret: fromEnv(env, environment, 'gateway.approvals.callback', cb.secretEnv, 'its signing secret', true), approvers: cb.approvers };
  return { slack, callback };
}
