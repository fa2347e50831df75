#!/usr/bin/env -S node --no-memory-reducer --single-threaded-gc
import { realpathSync } from 'node:fs';
import { join, relative } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { sharedSecret } from '../auth/keys.js';
import { mintAgentToken } from '../auth/mint.js';
import { loadConfig } from '../config/load.js';
import type { Config, Environment } from '../config/types.js';
import { gatewayEnvironment } from './environment.js';
import { ConfigError, ValetError } from '../errors.js';
import { compilePolicy, type Policy } from '../policy/compile.js';
import { memoryCounterStore, memoryHistoryStore } from '../policy/counters.js';
import { policyCheckReport } from '../policy/lint.js';
import { GitCandidate } from '../policy/reload.js';
import { explainScenario, outcomeOf, runPolicyTests } from '../policy/testing.js';
import { approvalsCommand, APPROVALS_USAGE } from './approvals.js';
import { replayCommand, REPLAY_USAGE } from './replay.js';
import { auditCommand, AUDIT_USAGE } from './audit.js';
import { credentialsCommand, CREDENTIALS_USAGE } from './credentials.js';
import { keysCommand, KEYS_USAGE } from './keys.js';
import { migrateCommand, MIGRATE_USAGE } from './migrate.js';
import { secretsCommand, SECRETS_USAGE } from './secrets.js';
import { SPEND_USAGE, usageCommand } from './spend.js';
import { UsageError } from './usage.js';
import { DEFAULT_LLM } from '../config/types.js';
import { LlmMetering } from '../llm/metering.js';

const finiteOrNull = (n: number): number | null => (Number.isFinite(n) ? Math.round(n * 1e9) / 1e9 : null);

const USAGE = `valet — a valet-key gateway for AI agents

Usage:
  valet start [--config DIR] [--data DIR] [--port N] [--admin-port N] [--host H] [--admin-host H] [--env E] [--shadow DIR|git:REF]
  valet token --admin --subject NAME --role admin|approver|auditor|secrets_manager [--tenant T] [--group G]... [--ttl 15m]
  valet token --agent ID [--tenant T] [--team T] [--role R]... [--env E] [--user U [--user-role R]...] [--session S] [--ttl 15m] [--issuer NAME]
${AUDIT_USAGE}
${SPEND_USAGE}
  valet policy check [DIR] [--strict] [--env E] [--against DIR|git:REF[:PATH]]
                       schema, CEL types; warns about dead rules, rules escaping their scope, call sequences that can
                       never hold, budgets smaller than an escalated call (--strict fails on warnings); --against: the
                       rules this change made dead, those dead already, those it removed
  valet policy test [DIR] [--env E]               run the YAML policy tests beside the policies
  valet policy explain --agent A --upstream U [--method M] [--path P] [--tenant T] [--team T] [--role R]...
                       [--env E] [--user U] [--user-role R]... [--query k=v]... [--json J | --form F] [--format text|json]
                       [--gateway-env E]
${REPLAY_USAGE}
  (policy tools run under the gateway's environment as start does: --env / --gateway-env, else VALET_ENV,
   else gateway.environment; explain's --env is the agent's env claim)
${SECRETS_USAGE}
${CREDENTIALS_USAGE}
${KEYS_USAGE}
${MIGRATE_USAGE}
${APPROVALS_USAGE}

Environment: VALET_CONFIG (./policies), VALET_DATA (./data), VALET_PORT, VALET_ADMIN_PORT, VALET_HOST, VALET_ADMIN_HOST, VALET_ADMIN_PUBLIC_URL, VALET_ENV,
VALET_SHADOW_CONFIG (a candidate policy evaluated in shadow, as start --shadow DIR|git:REF[:PATH]),
VALET_LOG_LEVEL, VALET_MASTER_KEY (secret store key), VALET_NEW_MASTER_KEY (secrets rekey),
VALET_ADMIN_URL / VALET_ADMIN_TOKEN (valet approvals), VALET_APPROVAL_LINK_KEY (approval link signing key),
VALET_AUDIT_ANCHOR_KEY (signs audit anchors; verify checks the signatures). Keys (signing keys, the master
key, link and anchor keys, webhook secrets) can also come from a file: NAME_FILE (a Docker secret).
`;

const common = {
  config: { type: 'string' },
  data: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];


/** The identity flags `token` and `policy explain` share. */
const identityFlags = {
  agent: { type: 'string' },
  tenant: { type: 'string' },
  team: { type: 'string' },
  role: { type: 'string', multiple: true },
  env: { type: 'string' },
  user: { type: 'string' },
  'user-role': { type: 'string', multiple: true },
} as const satisfies ParseArgsConfig['options'];

const env = process.env;
const configDir = (v: string | undefined): string => v ?? env['VALET_CONFIG'] ?? 'policies';
const dataDir = (v: string | undefined): string => v ?? env['VALET_DATA'] ?? 'data';

function parse<O extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: O, positionals = false) {
  try {
    return parseArgs({ args, options: { ...common, ...options }, allowPositionals: positionals, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

function integer(value: string | undefined, name: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be an integer from ${min} to ${max}`);
  return n;
}

function duration(value: string, name: string): number {
  const m = /^(\d+)(s|m|h|d)$/.exec(value);
  if (!m) throw new UsageError(`--${name} must look like 30s, 15m, 2h or 1d`);
  return Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[m[2] as 's' | 'm' | 'h' | 'd'];
}

async function start(args: string[]): Promise<void> {
  const { values } = parse(args, { port: { type: 'string' }, host: { type: 'string' }, 'admin-port': { type: 'string' }, 'admin-host': { type: 'string' }, env: { type: 'string' }, shadow: { type: 'string' } });
  // Loaded here, not at the top: every other command would otherwise pay for the whole gateway.
  const { startGateway } = await import('../main.js');
  const gateway = await startGateway({
    configDir: configDir(values.config),
    dataDir: dataDir(values.data),
    port: integer(values.port ?? env['VALET_PORT'], 'port', 0, 65535),
    adminPort: integer(values['admin-port'] ?? env['VALET_ADMIN_PORT'], 'admin-port', 0, 65535),
    host: values.host ?? env['VALET_HOST'],
    adminHost: values['admin-host'] ?? env['VALET_ADMIN_HOST'],
    adminPublicUrl: env['VALET_ADMIN_PUBLIC_URL'],
    environment: gatewayEnvironment(values.env, env),
    watch: true,
    shadowConfigDir: values.shadow ?? (env['VALET_SHADOW_CONFIG'] || undefined),
  });
  process.on('SIGHUP', () => gateway.policies.reload());
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    gateway.logger.info({ signal }, 'shutting down');
    gateway.close().then(
      () => process.exit(0),
      (err: unknown) => {
        gateway.logger.error({ err }, 'shutdown failed');
        gateway.logger.flush(() => process.exit(1));
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

/** `valet token`'s lifetime without --ttl (shorter when the issuer's max_ttl is). */
const DEFAULT_TTL_S = 900;

async function token(args: string[]): Promise<void> {
  const { values } = parse(args, {
    ...identityFlags,
    ttl: { type: 'string' },
    issuer: { type: 'string' },
    admin: { type: 'boolean' },
    subject: { type: 'string' },
    group: { type: 'string', multiple: true },
    session: { type: 'string' },
  });
  if (values.admin && values.session) throw new UsageError('--session is for agent tokens');
  if (!values.admin && values.group) throw new UsageError('--group is for --admin tokens (approver groups)');
  // An admin token names a person (--subject) and carries the admin plane's audience.
  if (values.admin && (!values.subject || values.agent || values.user)) throw new UsageError('--admin needs --subject NAME (and no --agent or --user)');
  if (!values.admin && values.subject) throw new UsageError('--subject is for --admin tokens; agent tokens take --agent');
  const agent = values.admin ? values.subject : values.agent;
  if (!agent) throw new UsageError('--agent is required');
  const config = loadConfig(configDir(values.config), { environment: gatewayEnvironment(undefined, env) });
  const issuer = config.issuers.find((i) => (values.issuer ? i.name === values.issuer : i.key.kind === 'secret'));
  if (!issuer || issuer.key.kind !== 'secret') {
    throw new UsageError(values.issuer ? `no shared-secret issuer named "${values.issuer}"` : 'no shared-secret issuer is configured');
  }
  // The gateway refuses a token living longer than its issuer's max_ttl, so none is minted.
  const ttlSeconds = values.ttl === undefined ? Math.min(DEFAULT_TTL_S, issuer.maxTtlS) : duration(values.ttl, 'ttl');
  if (ttlSeconds < 1 || ttlSeconds > issuer.maxTtlS) {
    throw new UsageError(`--ttl must be from 1s to issuer ${issuer.name}'s max_ttl (${issuer.maxTtlS}s)`);
  }
  const secret = sharedSecret(issuer, dataDir(values.data), env, config.gateway.environment);
  const jwt = await mintAgentToken(issuer, secret, {
    agent,
    audience: values.admin ? config.gateway.admin.audience : undefined,
    tenant: values.tenant,
    team: values.team,
    roles: values.role,
    environment: values.env,
    user: values.user,
    userRoles: values['user-role'],
    groups: values.group,
    session: values.session,
    ttlSeconds,
  });
  process.stdout.write(`${jwt}\n`);
}

/**
 * Loads and compiles a directory as `valet start` would, under the same environment (`--env`,
 * else `VALET_ENV`, else `gateway.environment`); throws ConfigError on any problem.
 */
function loadPolicy(dir: string, environment: Environment | undefined): { config: Config; policy: Policy } {
  const config = loadConfig(dir, { environment });
  return { config, policy: compilePolicy(config, { counters: memoryCounterStore(), history: memoryHistoryStore() }) };
}

async function policy(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  if (sub === 'check') {
    const { values, positionals } = parse(rest, { strict: { type: 'boolean' }, env: { type: 'string' }, against: { type: 'string' } }, true);
    const dir = positionals[0] ?? configDir(values.config);
    const environment = gatewayEnvironment(values.env, env);
    const { config } = loadPolicy(dir, environment);
    const against = values.against;
    let base: Config | undefined;
    if (against !== undefined) {
      // `git:REF[:PATH]` as `start --shadow` takes it: the set as committed at REF.
      const fromGit = GitCandidate.of(against, realpathSync(dir));
      try {
        const from = fromGit?.dir() ?? against;
        // A committed set is read from a temporary copy: its files are named as in the repository.
        const named = (file: string): string => (fromGit === undefined ? file : fromGit.path !== undefined ? join(fromGit.path, relative(from, file)) : relative(process.cwd(), join(dir, relative(from, file))));
        try {
          base = loadPolicy(from, environment).config;
        } catch (err) {
          if (err instanceof ConfigError) throw new ConfigError(err.problems.map((p) => ({ ...p, file: `(--against ${against}) ${named(p.file)}` })));
          throw err;
        }
        base = { ...base, rules: base.rules.map((r) => ({ ...r, at: { ...r.at, file: named(r.at.file) } })) };
      } finally {
        fromGit?.close();
      }
    }
    const lines = policyCheckReport(config, against === undefined || base === undefined ? undefined : { label: against, config: base });
    for (const l of lines) process.stderr.write(`${l.level}: ${l.text}\n`);
    const warnings = lines.filter((l) => l.level === 'warning').length;
    const summary =
      `${config.issuers.length} issuer(s), ${config.upstreams.size} upstream(s), ${config.tools.length} tool(s), ` +
      `${config.rules.length} rule(s), ${config.rateLimits.length + config.budgets.length} limit(s), environment ${config.gateway.environment}, version ${config.version}`;
    if (values.strict && warnings > 0) {
      // A CI log that says "ok" above a failed step misleads whoever reads only the last line.
      process.stdout.write(`failed: ${warnings} warning(s) with --strict; ${summary}\n`);
      process.exitCode = 1;
      return;
    }
    process.stdout.write(`ok: ${summary}\n`);
    return;
  }
  if (sub === 'test') {
    const { values, positionals } = parse(rest, { env: { type: 'string' } }, true);
    const { config } = loadPolicy(positionals[0] ?? configDir(values.config), gatewayEnvironment(values.env, env));
    const results = await runPolicyTests(config);
    for (const r of results) {
      process.stdout.write(`${r.passed ? 'ok  ' : 'FAIL'} ${r.name}${r.passed ? '' : `\n     ${r.at}: expected ${r.expected}, got ${r.actual} (${r.reason})`}\n`);
    }
    const failed = results.filter((r) => !r.passed).length;
    process.stdout.write(`${results.length - failed} passed, ${failed} failed\n`);
    if (failed > 0 || results.length === 0) process.exitCode = 1;
    return;
  }
  if (sub === 'replay') return replayCommand(rest);
  if (sub === 'explain') {
    const { values } = parse(rest, {
      ...identityFlags,
      upstream: { type: 'string' },
      method: { type: 'string', default: 'GET' },
      path: { type: 'string', default: '/' },
      query: { type: 'string', multiple: true },
      json: { type: 'string' },
      form: { type: 'string' },
      format: { type: 'string', default: 'text' },
      // `--env` is the agent's env claim here (as in `valet token`); this is the gateway's.
      'gateway-env': { type: 'string' },
    });
    if (!values.agent || !values.upstream) throw new UsageError('policy explain needs --agent and --upstream');
    let json: unknown;
    if (values.json !== undefined) {
      try {
        json = JSON.parse(values.json);
      } catch {
        throw new UsageError('--json is not valid JSON');
      }
    }
    const query: Record<string, string> = {};
    for (const q of values.query ?? []) {
      const eq = q.indexOf('=');
      if (eq < 1) throw new UsageError('--query takes name=value');
      query[q.slice(0, eq)] = q.slice(eq + 1);
    }
    const { config, policy: compiled } = loadPolicy(configDir(values.config), gatewayEnvironment(values['gateway-env'], env, '--gateway-env'));
    // An LLM call: priced as the gateway would, so usage budgets show what it would reserve.
    const upstreamConfig = config.upstreams.get(values.upstream);
    const metering = new LlmMetering(config.gateway.llm ?? DEFAULT_LLM);
    const route = upstreamConfig === undefined ? undefined : metering.route(upstreamConfig, values.method.toUpperCase(), values.path);
    const plan = route === undefined ? undefined : metering.plan(route, json);
    const r = await explainScenario(compiled, config, {
      identity: {
        agent: values.agent,
        ...(values.tenant !== undefined && { tenant: values.tenant }),
        ...(values.team !== undefined && { team: values.team }),
        roles: values.role ?? [],
        ...(values.env !== undefined && { env: values.env }),
        ...(values.user !== undefined && { user: values.user }),
        user_roles: values['user-role'] ?? [],
      },
      request: {
        upstream: values.upstream,
        method: values.method.toUpperCase(),
        path: values.path,
        query,
        ...(json !== undefined && { json }),
        ...(values.form !== undefined && { form: values.form }),
      },
    }, plan?.reserve);
    const outcome = outcomeOf(r.decision, r.limited);
    const llm = plan === undefined ? null : { model: plan.request.model, priced: plan.priced, price_name: plan.priceName, input_tokens: plan.request.inputTokens, max_output: plan.maxOutput, reserve: { tokens: finiteOrNull(plan.reserve.tokens), cost: finiteOrNull(plan.reserve.cost) } };
    if (values.format === 'json') {
      process.stdout.write(`${JSON.stringify({ outcome, environment: config.gateway.environment, decision: r.decision, trace: r.trace, limits: r.limits, llm, shadow: r.shadow ?? null, response: ((a) => (a === undefined ? null : { kind: a.kind, rules: a.rules, reason: a.reason }))(compiled.responsePlan(r.input)?.at(200)), tool: r.input.facts.tool ?? null, argsError: r.input.facts.argsError ?? null }, (_k, v: unknown) => (typeof v === 'bigint' ? Number(v) : v), 2)}\n`);
      return;
    }
    process.stdout.write(`request: ${values.method.toUpperCase()} ${values.path} on ${values.upstream}${r.input.facts.tool ? ` (tool ${r.input.facts.tool})` : ''}\n`);
    if (r.input.facts.argsError) process.stdout.write(`arguments: unusable: ${r.input.facts.argsError}\n`);
    for (const t of r.trace) {
      process.stdout.write(
        `  ${t.matched ? 'MATCH' : '  -  '} ${t.effect.padEnd(8)} ${t.id}${t.principal === 'user' ? ' (as user)' : ''}  ${t.at}  [scope: ${t.scope}]  ${t.why}\n`,
      );
    }
    if (llm !== null) {
      process.stdout.write(`llm call: model ${llm.model || '(none)'} (${plan?.priced === 'table' ? `priced as ${llm.price_name}` : 'not in the price table: ceiling price'}), ~${llm.input_tokens} input tokens, up to ${llm.max_output} output; reserves ${llm.reserve.tokens ?? 'an unknowable number of'} tokens, ${llm.reserve.cost === null ? 'an unknowable cost' : llm.reserve.cost.toFixed(6)}\n`);
    }
    for (const l of r.limits) {
      process.stdout.write(`  ${l.applies ? 'LIMIT' : '  -  '} ${(l.usage === undefined ? l.kind : `budget:${l.usage}`).padEnd(12)} ${l.id}  ${l.at}  ${l.amount !== undefined ? `takes ${l.amount} of ${l.limit} per ${l.window}` : l.why}\n`);
    }
    process.stdout.write(`decision: ${outcome.effect} by ${outcome.rule}: ${outcome.reason} (environment ${config.gateway.environment})\n`);
    if (r.shadow !== undefined) process.stdout.write(`shadow (not enforced): ${r.shadow.effect} by ${r.shadow.rules.join(', ')}: ${r.shadow.reason}\n`);
    const answer = compiled.responsePlan(r.input)?.at(200);
    if (answer !== undefined) process.stdout.write(`response rules on a 200 answer: ${answer.kind} by ${answer.rules.join(', ')}: ${answer.reason}\n`);
    return;
  }
  throw new UsageError('valet policy check|test|explain|replay');
}

const COMMANDS: Record<string, (args: string[]) => Promise<void>> = {
  start,
  token,
  audit: auditCommand,
  usage: usageCommand,
  policy,
  secrets: secretsCommand,
  credentials: credentialsCommand,
  approvals: approvalsCommand,
  keys: keysCommand,
  migrate: migrateCommand,
};

async function main(argv: string[]): Promise<void> {
  // Whatever a command creates (data files, keys, exports) is for this user only; the data
  // directory is tightened explicitly too, for files created before or by another umask.
  process.umask(0o077);
  const [command, ...args] = argv;
  if (command === undefined || command === 'help' || command === '--help' || command === '-h') {
    process.stdout.write(USAGE);
    return;
  }
  const run = COMMANDS[command];
  if (!run) throw new UsageError(`unknown command "${command}"`);
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(USAGE);
    return;
  }
  await run(args);
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof UsageError) {
    process.stderr.write(`valet: ${err.message}\n\n${USAGE}`);
    process.exit(2);
  }
  if (err instanceof ConfigError) {
    process.stderr.write(`valet: invalid configuration\n${err.message}\n`);
    process.exit(1);
  }
  if (err instanceof ValetError) {
    process.stderr.write(`valet: ${err.code}: ${err.message}\n`);
    process.exit(1);
  }
  const e = err as NodeJS.ErrnoException;
  process.stderr.write(`valet: ${e.code ? `${e.code}: ` : ''}${e.message}\n`);
  process.exit(1);
});
