import { createHash, type Hash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { Ajv, type ErrorObject } from 'ajv';
import { isMap, isPair, isScalar, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import { ConfigError, type ConfigProblem } from '../errors.js';
import { classifyRequestHeader, SCRUB_DROP, type HeaderClass } from '../proxy/headers.js';
import { NOT_INJECTABLE, parseTemplate, providedSecret, secretNames, stdioSecret } from './credential.js';
import type { ClientAuth, ProviderConfig, ProviderKind } from '../credentials/types.js';
import { fileSchema } from './schema.js';
import { expandPresets, presets } from './presets.js';
import { DEFAULT_APPROVAL_SETTINGS, DEFAULT_AUDIT, DEFAULT_COUNTERS, DEFAULT_LISTENER, DEFAULT_LLM, DEFAULT_SESSION_TTL_MS, type LlmSettings, type PriceOverride } from './types.js';
import type { LlmSetting } from '../llm/types.js';
import { shippedPrices } from '../llm/prices.js';
import type {
  AgentRegistration,
  ApprovalConfig,
  ApprovalChannelSetting,
  ApprovalSettings,
  BudgetConfig,
  ChatApprovers,
  ClaimNames,
  ContextConfig,
  Location,
  MatchConfig,
  PolicyTestConfig,
  RateLimitConfig,
  ToolConfig,
  Config,
  CredentialConfig,
  Environment,
  IssuerConfig,
  InjectedHeader,
  IssuerKey,
  ListenerSettings,
  ResponseRuleConfig,
  RuleConfig,
  SequenceStep,
  Scope,
  SecretSourceSetting,
  UpstreamConfig,
} from './types.js';

const validateFile = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true }).compile(fileSchema);

const DEFAULT_CLAIMS: ClaimNames = { tenant: 'tenant', team: 'team', roles: 'roles', environment: 'env', user: 'user', userRoles: 'user_roles', groups: 'groups' };
const SYMMETRIC = new Set(['HS256', 'HS384', 'HS512']);

/* eslint-disable @typescript-eslint/no-explicit-any -- raw YAML before validation */
type Raw = any;

interface ParsedFile {
  name: string;
  doc: Document.Parsed;
  lines: LineCounter;
  data: Raw;
  /** The scope its place in the directory implies (see directoryScope). */
  scope: Scope | undefined;
}

class Problems {
  readonly list: ConfigProblem[] = [];

  add(file: ParsedFile, path: readonly (string | number)[], message: string, atKey = false): void {
    const { line, column } = locate(file, path, atKey);
    this.list.push({ file: file.name, line, column, path: formatPath(path), message });
  }
}

export interface LoadOptions {
  /** Overrides `gateway.listen.port` (flag or `VALET_PORT`). */
  port?: number | undefined;
  /** Overrides `gateway.admin.listen.port` (flag or `VALET_ADMIN_PORT`). */
  adminPort?: number | undefined;
  host?: string | undefined;
  /** Overrides `gateway.admin.listen.host` (flag or `VALET_ADMIN_HOST`). */
  adminHost?: string | undefined;
  /** Overrides `gateway.admin.public_url` (`VALET_ADMIN_PUBLIC_URL`). */
  adminPublicUrl?: string | undefined;
  environment?: Environment | undefined;
}

/**
 * Reads every `*.yaml` / `*.yml` file below `dir`, validates it (unknown keys, types, references),
 * and returns a deeply frozen {@link Config}. Throws {@link ConfigError} listing every problem with
 * its file, line and column; never returns a partial configuration.
 */
export function loadConfig(dir: string, options: LoadOptions = {}): Config {
  const root = resolve(dir);
  let files: string[];
  try {
    files = listYaml(root);
  } catch (err) {
    throw new ConfigError([{ file: root, line: 0, column: 0, path: '', message: `cannot read directory (${(err as NodeJS.ErrnoException).code ?? 'error'})` }]);
  }
  if (files.length === 0) {
    throw new ConfigError([{ file: root, line: 0, column: 0, path: '', message: 'no .yaml files found' }]);
  }

  const problems = new Problems();
  const hash = createHash('sha256');
  let presetsHashed = false;
  const parsed: ParsedFile[] = [];
  for (const abs of files) {
    const name = relative(process.cwd(), abs) || abs;
    const text = readFileSync(abs, 'utf8');
    hash.update(relative(root, abs)).update('\0').update(text).update('\0');
    const lines = new LineCounter();
    const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false });
    const scope = directoryScope(relative(root, abs));
    if (typeof scope === 'string') {
      problems.list.push({ file: name, line: 0, column: 0, path: '', message: scope });
      continue;
    }
    const file: ParsedFile = { name, doc, lines, data: undefined, scope };
    if (doc.errors.length > 0) {
      for (const e of doc.errors) {
        const pos = lines.linePos(e.pos[0]);
        problems.list.push({ file: name, line: pos.line, column: pos.col, path: '', message: e.message.split('\n')[0] ?? e.message });
      }
      continue;
    }
    file.data = doc.toJS({ maxAliasCount: 100 }) ?? {};
    // Presets expand before validation: the merged upstream is checked like one written whole.
    if (usesPreset(file.data) && !presetsHashed) {
      hash.update('presets\0').update(presets().text);
      presetsHashed = true;
    }
    const presetProblems = isRecord(file.data) ? expandPresets(file.data) : [];
    for (const p of presetProblems) problems.add(file, ['upstreams', p.index, 'preset'], p.message);
    if (presetProblems.length > 0) continue;
    if (!validateFile(file.data)) {
      for (const e of validateFile.errors ?? []) reportSchemaError(problems, file, e);
      continue;
    }
    parsed.push(file);
  }

  const config = problems.list.length === 0 ? assemble(root, parsed, problems, options, hash) : undefined;
  if (problems.list.length > 0 || config === undefined) throw new ConfigError(problems.list);
  return deepFreeze({ ...config, version: `sha256:${hash.digest('hex').slice(0, 16)}` });
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Whether a file names a preset (their content then counts in the policy version). */
const usesPreset = (data: unknown): boolean => isRecord(data) && Array.isArray(data['upstreams']) && data['upstreams'].some((u: unknown) => isRecord(u) && u['preset'] !== undefined);

function assemble(root: string, files: ParsedFile[], problems: Problems, options: LoadOptions, hash: Hash): Omit<Config, 'version'> | undefined {
  let gatewayRaw: Raw;
  let gatewayFile: ParsedFile | undefined;
  const issuers: IssuerConfig[] = [];
  const upstreams = new Map<string, UpstreamConfig>();
  const hostOwners = new Map<string, string>();
  const portOwners = new Map<number, string>();
  const issuerNames = new Set<string>();
  const pending: Record<'agents' | 'tools' | 'rules' | 'response_rules' | 'rate_limits' | 'budgets' | 'tests' | 'contexts', { file: ParsedFile; index: number; raw: Raw }[]> = {
    agents: [],
    contexts: [],
    tools: [],
    rules: [],
    response_rules: [],
    rate_limits: [],
    budgets: [],
    tests: [],
  };

  for (const file of files) {
    const d = file.data;
    if (d.gateway !== undefined) {
      if (gatewayFile !== undefined) {
        problems.add(file, ['gateway'], `defined again (first in ${gatewayFile.name})`, true);
      } else {
        gatewayRaw = d.gateway;
        gatewayFile = file;
      }
    }
    (d.issuers ?? []).forEach((raw: Raw, i: number) => {
      const issuer = buildIssuer(root, file, i, raw, problems);
      if (issuerNames.has(raw.name)) problems.add(file, ['issuers', i, 'name'], `issuer "${raw.name}" is defined twice`);
      issuerNames.add(raw.name);
      if (issuer) issuers.push(issuer);
    });
    (d.upstreams ?? []).forEach((raw: Raw, i: number) => {
      const upstream = buildUpstream(file, i, raw, problems);
      if (upstreams.has(raw.name)) problems.add(file, ['upstreams', i, 'name'], `upstream "${raw.name}" is defined twice`);
      else if (upstream) {
        // A host or a port routes to one upstream only.
        for (const [j, host] of upstream.hosts.entries()) {
          const other = hostOwners.get(host);
          if (other !== undefined) problems.add(file, ['upstreams', i, 'hosts', j], `host "${host}" already routes to upstream "${other}"`);
          hostOwners.set(host, upstream.name);
        }
        const port = upstream.listen?.port ?? 0;
        if (port !== 0) {
          const other = portOwners.get(port);
          if (other !== undefined) problems.add(file, ['upstreams', i, 'listen', 'port'], `port ${port} is already upstream "${other}"'s listener`);
          portOwners.set(port, upstream.name);
        }
        upstreams.set(upstream.name, upstream);
      }
    });
    for (const section of Object.keys(pending) as (keyof typeof pending)[]) {
      (d[section] ?? []).forEach((raw: Raw, index: number) => pending[section].push({ file, index, raw }));
    }
  }

  const tools = new Map<string, ToolConfig>();
  for (const { file, index, raw } of pending.tools) {
    const at = ['tools', index];
    if (tools.has(raw.name)) problems.add(file, [...at, 'name'], `tool "${raw.name}" is defined twice`);
    if (!upstreams.has(raw.upstream)) problems.add(file, [...at, 'upstream'], `unknown upstream "${raw.upstream}"`);
    const why = checkPathTemplate(raw.path);
    if (why) problems.add(file, [...at, 'path'], why);
    tools.set(raw.name, {
      name: raw.name,
      description: raw.description,
      upstream: raw.upstream,
      method: raw.method,
      path: raw.path,
      args: { ...(raw.args ?? {}) },
      ...(raw.audit_args !== undefined && { auditArgs: [...raw.audit_args] }),
      at: location(file, at),
    });
  }

  const ids = new Map<string, string>();
  const buildMatch = (section: string, file: ParsedFile, index: number, raw: Raw): MatchConfig => {
    const at = [section, index];
    const first = ids.get(`${section}:${raw.id}`);
    if (first !== undefined) problems.add(file, [...at, 'id'], `id "${raw.id}" is already used at ${first}`);
    ids.set(`${section}:${raw.id}`, `${file.name}:${locate(file, at, false).line}`);
    if (raw.upstream !== undefined && !upstreams.has(raw.upstream)) {
      problems.add(file, [...at, 'upstream'], `unknown upstream "${raw.upstream}"`);
    }
    (raw.tools ?? []).forEach((t: string, j: number) => {
      const tool = tools.get(t);
      const mcpUpstream = t.slice(0, t.indexOf('.'));
      // An MCP server's tools are its own: `<upstream>.<tool name>` needs no declaration.
      if (!tool && upstreams.get(mcpUpstream)?.kind === 'mcp') {
        if (raw.upstream !== undefined && raw.upstream !== mcpUpstream) problems.add(file, [...at, 'tools', j], `tool "${t}" belongs to upstream "${mcpUpstream}", not "${raw.upstream}"`);
      } else if (!tool) problems.add(file, [...at, 'tools', j], `unknown tool "${t}"`);
      else if (raw.upstream !== undefined && tool.upstream !== raw.upstream) {
        problems.add(file, [...at, 'tools', j], `tool "${t}" belongs to upstream "${tool.upstream}", not "${raw.upstream}"`);
      }
    });
    (raw.paths ?? []).forEach((p: string, j: number) => {
      const why = checkPathPattern(p);
      if (why) problems.add(file, [...at, 'paths', j], why);
    });
    const lines: Record<string, number> = {};
    for (const field of ['when', 'sum', 'key']) {
      if (raw[field] !== undefined) lines[field] = locate(file, [...at, field], false).line;
    }
    // The file's place is a scope of its own: `scope:` may narrow it, never leave it.
    const fileScope = file.scope;
    if (fileScope !== undefined) {
      for (const k of SCOPE_KEYS) {
        const own = fileScope[k];
        const written = raw.scope?.[k];
        if (own !== undefined && written !== undefined && written !== own) {
          problems.add(file, [...at, 'scope', k], `${k} "${written}" escapes the file's scope: every rule in ${file.name} applies to ${k} "${own}" only`);
        }
      }
    }
    return {
      id: raw.id,
      description: raw.description,
      scope: fileScope === undefined ? raw.scope : { ...raw.scope, ...fileScope },
      ...(fileScope !== undefined && { fileScope }),
      upstream: raw.upstream,
      tools: raw.tools,
      methods: raw.methods,
      paths: raw.paths,
      roles: raw.roles,
      environments: raw.environments,
      when: raw.when,
      at: location(file, at),
      lines,
    };
  };

  const rules: RuleConfig[] = pending.rules.map(({ file, index, raw }) => {
    const match = buildMatch('rules', file, index, raw);
    if (raw.effect === 'escalate' && raw.approval === undefined) {
      problems.add(file, ['rules', index], 'an "escalate" rule needs "approval" (group, timeout, mode)');
    }
    if (raw.effect !== 'escalate' && raw.approval !== undefined) {
      problems.add(file, ['rules', index, 'approval'], 'only "escalate" rules take "approval"', true);
    }
    const steps = (field: 'requires' | 'blocked_by'): SequenceStep[] | undefined =>
      (raw[field] as (string | { tool: string; within?: string; same?: string[] })[] | undefined)?.map((step, j) => {
        const s = typeof step === 'string' ? { tool: step } : step;
        if (!tools.has(s.tool) && upstreams.get(s.tool.slice(0, s.tool.indexOf('.')))?.kind !== 'mcp') problems.add(file, ['rules', index, field, j], `unknown tool "${s.tool}"`);
        return { tool: s.tool, ...(s.within !== undefined && { withinMs: parseDuration(s.within) }), ...(s.same !== undefined && { same: s.same }) };
      });
    const requires = steps('requires');
    const blockedBy = steps('blocked_by');
    if (raw.effect === 'deny' && (requires !== undefined || blockedBy !== undefined)) {
      problems.add(file, ['rules', index, requires !== undefined ? 'requires' : 'blocked_by'], 'a broken call sequence makes its rule deny, so on a "deny" rule it would change nothing: put it on the allow or escalate rule it guards');
    }
    return {
      ...match,
      effect: raw.effect,
      ...(raw.mode === 'shadow' && { mode: 'shadow' as const }),
      reason: raw.reason,
      approval: raw.approval && buildApproval(raw.approval),
      ...(requires !== undefined && { requires }),
      ...(blockedBy !== undefined && { blockedBy }),
    };
  });
  const responseRules: ResponseRuleConfig[] = pending.response_rules.map(({ file, index, raw }) => {
    const at = ['response_rules', index];
    const needs = (field: 'redact' | 'approval', effect: string): void => {
      if (raw.effect === effect && raw[field] === undefined) problems.add(file, at, `a "${effect}" response rule needs "${field}"`);
      if (raw.effect !== effect && raw[field] !== undefined) problems.add(file, [...at, field], `only "${effect}" response rules take "${field}"`);
    };
    needs('redact', 'redact');
    needs('approval', 'escalate');
    if (raw.redact !== undefined && raw.redact.paths === undefined && raw.redact.patterns === undefined) problems.add(file, [...at, 'redact'], 'give "paths", "patterns" or both');
    if (raw.redact?.keep !== undefined && raw.redact.patterns === undefined) problems.add(file, [...at, 'redact', 'keep'], '"keep" decides about pattern matches: give "patterns"');
    const match = buildMatch('response_rules', file, index, raw);
    return {
      ...match,
      lines: { ...match.lines, ...(raw.redact?.keep !== undefined && { keep: locate(file, [...at, 'redact', 'keep'], false).line }) },
      effect: raw.effect,
      status: raw.status,
      redact: raw.redact,
      reason: raw.reason,
      approval: raw.approval === undefined ? undefined : buildApproval({ ...raw.approval, mode: 'hold' }),
    };
  });
  const rateLimits: RateLimitConfig[] = pending.rate_limits.map(({ file, index, raw }) => ({
    ...buildMatch('rate_limits', file, index, raw),
    limit: raw.limit,
    windowMs: parseDuration(raw.window),
    key: raw.key ?? 'agent',
    ...(raw.fail_open !== undefined && { failOpen: raw.fail_open }),
  }));
  for (const { file, index, raw } of pending.budgets) {
    if (raw.usage !== undefined && raw.upstream !== undefined && upstreams.has(raw.upstream) && upstreams.get(raw.upstream)?.llm === undefined) {
      problems.add(file, ['budgets', index, 'upstream'], `upstream "${raw.upstream}" is not an LLM API (no llm: family), so nothing it answers is metered`);
    }
  }
  const budgets: BudgetConfig[] = pending.budgets.map(({ file, index, raw }) => ({
    ...buildMatch('budgets', file, index, raw),
    sum: raw.sum,
    usage: raw.usage,
    limit: raw.limit,
    windowMs: parseDuration(raw.window),
    key: raw.key ?? 'agent',
    ...(raw.fail_open !== undefined && { failOpen: raw.fail_open }),
  }));
  const contextNames = new Set<string>();
  const contexts: ContextConfig[] = pending.contexts.map(({ file, index, raw }) => {
    const at = ['contexts', index];
    if (contextNames.has(raw.name)) problems.add(file, [...at, 'name'], `context "${raw.name}" is defined twice`);
    contextNames.add(raw.name);
    if ((raw.file === undefined) === (raw.url === undefined)) problems.add(file, at, 'exactly one of "file" and "url" is required');
    if (raw.upstream !== undefined && !upstreams.has(raw.upstream)) problems.add(file, [...at, 'upstream'], `unknown upstream "${raw.upstream}"`);
    (raw.tools ?? []).forEach((t: string, j: number) => {
      if (!tools.has(t) && upstreams.get(t.slice(0, t.indexOf('.')))?.kind !== 'mcp') problems.add(file, [...at, 'tools', j], `unknown tool "${t}"`);
    });
    const path = raw.file === undefined ? undefined : resolve(root, raw.file);
    return {
      name: raw.name,
      description: raw.description,
      key: raw.key,
      upstream: raw.upstream,
      tools: raw.tools,
      file: path,
      entries: path === undefined ? undefined : readContextFile(root, path, hash, (message) => problems.add(file, [...at, 'file'], message)),
      url: raw.url,
      cacheTtlMs: raw.cache_ttl ? parseDuration(raw.cache_ttl) : 60_000,
      timeoutMs: raw.timeout ? parseDuration(raw.timeout) : 2_000,
      at: location(file, at),
    };
  });
  const agents = buildRegistry(pending.agents, problems);
  const tests: PolicyTestConfig[] = pending.tests.map(({ file, index, raw }) => {
    if (!upstreams.has(raw.request.upstream)) {
      problems.add(file, ['tests', index, 'request', 'upstream'], `unknown upstream "${raw.request.upstream}"`);
    }
    if (raw.request.json !== undefined && raw.request.form !== undefined) {
      problems.add(file, ['tests', index, 'request'], 'give "json" or "form", not both');
    }
    (raw.before ?? []).forEach((r: Raw, j: number) => {
      if (!upstreams.has(r.upstream)) problems.add(file, ['tests', index, 'before', j, 'upstream'], `unknown upstream "${r.upstream}"`);
    });
    return { name: raw.name, identity: raw.identity, request: raw.request, ...(raw.before !== undefined && { before: raw.before }), expect: raw.expect, at: location(file, ['tests', index]) };
  });

  const environment: Environment = options.environment ?? gatewayRaw?.environment ?? 'development';
  const issuerValues = new Map<string, string>();
  for (const file of files) {
    (file.data.issuers ?? []).forEach((raw: Raw, i: number) => {
      const first = issuerValues.get(raw.issuer);
      if (first !== undefined) problems.add(file, ['issuers', i, 'issuer'], `iss "${raw.issuer}" is already used by issuer "${first}"`);
      else issuerValues.set(raw.issuer, raw.name);
      if (environment !== 'production') return;
      // Conveniences that are unsafe in production are refused there. (`secret.generate` is
      // refused where the key is resolved: production needs the variable set, never a generated key.)
      if (typeof raw.jwks_url === 'string' && !raw.jwks_url.startsWith('https://')) {
        problems.add(file, ['issuers', i, 'jwks_url'], 'must use https in production');
      }
    });
  }

  if (issuers.length === 0 && problems.list.length === 0) {
    problems.list.push({ file: root, line: 0, column: 0, path: 'issuers', message: 'at least one token issuer is required' });
  }
  if (problems.list.length > 0) return undefined;

  const g = gatewayRaw ?? {};
  const timezone: string = g.timezone ?? 'UTC';
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: timezone });
  } catch {
    if (gatewayFile) problems.add(gatewayFile, ['gateway', 'timezone'], `unknown time zone "${timezone}"`);
    return undefined;
  }
  // One audience may never serve both planes: an agent token must not open the admin API.
  const adminAudience: string = g.admin?.audience ?? 'valet-admin';
  for (const [i, issuer] of issuers.entries()) {
    if (!issuer.audience.includes(adminAudience)) continue;
    const message = `"${adminAudience}" is both the admin audience and an audience of issuer ${issuer.name} (issuers[${i}]); the admin plane needs its own`;
    if (gatewayFile) problems.add(gatewayFile, ['gateway', 'admin', 'audience'], message);
    else problems.list.push({ file: root, line: 0, column: 0, path: 'gateway.admin.audience', message });
  }
  if (problems.list.length > 0) return undefined;
  const secretSources = buildSecretSources(root, gatewayFile, g.secrets?.sources, problems);
  if (secretSources === undefined) return undefined;
  const approvals = buildApprovalSettings(gatewayFile, g.approvals, environment, problems);
  if (approvals === undefined) return undefined;
  const listener = buildListenerSettings(gatewayFile, g, problems);
  if (listener === undefined) return undefined;
  const llm = buildLlmSettings(gatewayFile, g.llm, problems);
  if (llm === undefined) return undefined;
  return {
    dir: root,
    gateway: {
      environment,
      listen: { host: options.host ?? g.listen?.host ?? '127.0.0.1', port: options.port ?? g.listen?.port ?? 8080 },
      shutdownGraceMs: g.shutdown_grace_ms ?? 10_000,
      maxRetryAfterS: g.max_retry_after_s ?? 60,
      maxHeaderBytes: g.max_header_bytes ?? 16_384,
      maxBodyBytes: g.max_body_bytes ?? 1_048_576,
      timezone,
      listener,
      secrets: { sources: secretSources, backend: g.secrets?.backend ?? 'sqlite', postgres: { url: g.secrets?.postgres?.url } },
      approvals,
      policy: {
        requireRegisteredAgents: g.policy?.require_registered_agents ?? false,
        sessions: { header: g.policy?.sessions?.header?.toLowerCase(), ttlMs: g.policy?.sessions?.ttl === undefined ? DEFAULT_SESSION_TTL_MS : parseDuration(g.policy.sessions.ttl) },
      },
      llm,
      counters: {
        backend: g.counters?.backend ?? DEFAULT_COUNTERS.backend,
        failOpen: g.counters?.fail_open ?? DEFAULT_COUNTERS.failOpen,
        redis: { url: g.counters?.redis?.url, prefix: g.counters?.redis?.prefix ?? DEFAULT_COUNTERS.redis.prefix },
      },
      audit: {
        failOpen: g.audit?.fail_open ?? DEFAULT_AUDIT.failOpen,
        backend: g.audit?.backend ?? DEFAULT_AUDIT.backend,
        postgres: { url: g.audit?.postgres?.url, schema: g.audit?.postgres?.schema, instance: g.audit?.postgres?.instance },
        writer: g.audit?.writer ?? DEFAULT_AUDIT.writer,
        durability: g.audit?.durability ?? DEFAULT_AUDIT.durability,
        busyTimeoutMs: g.audit?.busy_timeout_ms ?? DEFAULT_AUDIT.busyTimeoutMs,
        retentionDays: g.audit?.retention_days,
        tenantRetentionDays: { ...g.audit?.tenant_retention_days },
        anchor: {
          intervalMs: (g.audit?.anchor?.interval_s ?? 60) * 1000,
          command: g.audit?.anchor?.command,
          url: g.audit?.anchor?.url,
        },
      },
      admin: {
        listen: { host: options.adminHost ?? g.admin?.listen?.host ?? '127.0.0.1', port: options.adminPort ?? g.admin?.listen?.port ?? 8081 },
        audience: adminAudience,
        publicUrl: options.adminPublicUrl ?? g.admin?.public_url,
      },
    },
    issuers,
    upstreams,
    tools: [...tools.values()],
    rules,
    responseRules,
    rateLimits,
    budgets,
    tests,
    contexts,
    agents,
  };
}

/** Node's timers fire at once past 2^31-1 ms (~24.8 days): every listener deadline stays well below. */
const MAX_LISTENER_TIMEOUT_MS = 86_400_000;

/** `gateway.timeouts`, `gateway.max_stream_body_bytes` and the connection caps, checked against each other. */
/** A schema-checked `approval:` (a rule's, or `gateway.llm.approval`): `hold` by default, which waits 60 s; `async` 15 min. */
function buildApproval(raw: Raw): ApprovalConfig {
  const mode = raw.mode ?? 'hold';
  return {
    group: raw.group,
    mode,
    timeoutMs: raw.timeout ? parseDuration(raw.timeout) : mode === 'hold' ? 60_000 : 900_000,
    ...(raw.redact !== undefined && { redact: [...raw.redact] }),
  };
}

/** `gateway.llm`: a price for a model the shipped table lacks needs both `input` and `output`. */
function buildLlmSettings(file: ParsedFile | undefined, raw: Raw | undefined, problems: Problems): LlmSettings | undefined {
  if (raw === undefined) return DEFAULT_LLM;
  const at = ['gateway', 'llm'];
  const before = problems.list.length;
  const prices = (raw.prices ?? {}) as Record<string, PriceOverride>;
  for (const [model, p] of Object.entries(prices)) {
    if (shippedPrices().lookup(model) === undefined && (p.input === undefined || p.output === undefined)) {
      if (file) problems.add(file, [...at, 'prices', model], `"${model}" is not in the shipped price table: give at least input and output`);
    }
  }
  const unknownModel = raw.unknown_model ?? DEFAULT_LLM.unknownModel;
  if (unknownModel === 'escalate' && raw.approval === undefined && file) problems.add(file, [...at, 'approval'], 'unknown_model: escalate needs approval.group (who approves calls for unknown models)');
  if (problems.list.length > before) return undefined;
  return {
    prices,
    unknownModel,
    approval: raw.approval === undefined ? undefined : buildApproval(raw.approval),
    overrun: raw.overrun ?? DEFAULT_LLM.overrun,
    defaultMaxOutput: raw.default_max_output,
    opaqueBatchCost: raw.opaque_batch_cost,
    maxBodyBytes: raw.max_body_bytes ?? DEFAULT_LLM.maxBodyBytes,
  };
}

function buildListenerSettings(file: ParsedFile | undefined, g: Raw, problems: Problems): ListenerSettings | undefined {
  if (file === undefined) return DEFAULT_LISTENER;
  let ok = true;
  const timeout = (key: 'headers' | 'body_idle' | 'body', fallback: number): number => {
    const raw: string | undefined = g.timeouts?.[key];
    if (raw === undefined) return fallback;
    const ms = parseDuration(raw);
    if (ms > MAX_LISTENER_TIMEOUT_MS) {
      problems.add(file, ['gateway', 'timeouts', key], 'must be at most 24h');
      ok = false;
    }
    return ms;
  };
  const settings: ListenerSettings = {
    headersTimeoutMs: timeout('headers', DEFAULT_LISTENER.headersTimeoutMs),
    bodyIdleTimeoutMs: timeout('body_idle', DEFAULT_LISTENER.bodyIdleTimeoutMs),
    bodyTimeoutMs: timeout('body', DEFAULT_LISTENER.bodyTimeoutMs),
    maxStreamBodyBytes: g.max_stream_body_bytes ?? DEFAULT_LISTENER.maxStreamBodyBytes,
    maxConnections: g.max_connections ?? DEFAULT_LISTENER.maxConnections,
    maxConnectionsPerClient: g.max_connections_per_client ?? DEFAULT_LISTENER.maxConnectionsPerClient,
  };
  // Every body passes the streaming limit, buffered ones too: a smaller one would silently lower max_body_bytes.
  const maxBody: number = g.max_body_bytes ?? 1_048_576;
  if (settings.maxStreamBodyBytes < maxBody) {
    problems.add(file, ['gateway', 'max_stream_body_bytes'], `max_stream_body_bytes (${settings.maxStreamBodyBytes}) must be at least max_body_bytes (${maxBody})`);
    ok = false;
  }
  return ok ? settings : undefined;
}

const SCOPE_KEYS = ['tenant', 'team', 'agent'] as const;
/** Scope directories, in the only order they may nest. */
const SCOPE_DIRS = ['tenants', 'teams', 'agents'] as const;

/**
 * The scope a file's place implies: `tenants/<tenant>`, `teams/<team>` and `agents/<id>` (a file
 * `<name>.yaml` or a directory `<name>/`), nested in that order (`tenants/acme/teams/payments.yaml`
 * is tenant acme and team payments). Files elsewhere have none. A scope directory anywhere else
 * (out of order, or below an ordinary directory) would look like a scope and not be one: that is
 * an error, not a guess.
 */
function directoryScope(rel: string): Scope | string | undefined {
  const parts = rel.split(/[\\/]/);
  const scope: { -readonly [K in keyof Scope]: Scope[K] } = {};
  let next = 0;
  let i = 0;
  for (; i + 1 < parts.length; i += 2) {
    const level = SCOPE_DIRS.indexOf(parts[i] as (typeof SCOPE_DIRS)[number]);
    if (level === -1) break;
    if (level < next) return `"${parts[i]}/" may not be nested below "${SCOPE_DIRS[next - 1]}/": scope directories nest as tenants/<tenant>/teams/<team>/agents/<id>`;
    const value = (parts[i + 1] as string).replace(/\.ya?ml$/, '');
    scope[SCOPE_KEYS[level] as keyof Scope] = value;
    next = level + 1;
  }
  for (let j = i; j < parts.length - 1; j++) {
    if ((SCOPE_DIRS as readonly string[]).includes(parts[j] as string)) {
      return `"${parts[j]}/" is a scope directory only at the top or directly below another scope (tenants/<tenant>/teams/<team>/agents/<id>); here its scope would be ignored`;
    }
  }
  return Object.keys(scope).length === 0 ? undefined : scope;
}

/**
 * `agents:`: where each agent belongs. An id is unique within its tenant; an entry without a
 * tenant claims the id in every tenant, so it may be the id's only entry. A file whose place
 * scopes it may not register agents: it could otherwise move any agent into its own team.
 */
function buildRegistry(entries: readonly { file: ParsedFile; index: number; raw: Raw }[], problems: Problems): AgentRegistration[] {
  const seen = new Map<string, AgentRegistration[]>();
  const out: AgentRegistration[] = [];
  for (const { file, index, raw } of entries) {
    const at = ['agents', index];
    if (file.scope !== undefined) {
      problems.add(file, at, 'the agent registry belongs in an organisation-level file (not below agents/, teams/ or tenants/)');
      continue;
    }
    const entry: AgentRegistration = { id: raw.id, tenant: raw.tenant, team: raw.team, description: raw.description, at: location(file, at) };
    const same = seen.get(entry.id) ?? [];
    const clash = same.find((o) => o.tenant === entry.tenant || o.tenant === undefined || entry.tenant === undefined);
    if (clash !== undefined) {
      const where = `${clash.at.file}:${clash.at.line}`;
      problems.add(
        file,
        [...at, 'id'],
        clash.tenant === entry.tenant
          ? `agent "${entry.id}" is already registered${entry.tenant === undefined ? '' : ` in tenant "${entry.tenant}"`} at ${where}`
          : `agent "${entry.id}" is registered both with and without a tenant (also at ${where}); give every entry of it a tenant`,
      );
    }
    seen.set(entry.id, [...same, entry]);
    out.push(entry);
  }
  return out;
}

/** `gateway.approvals`: caps, links and channels; each channel's required keys by its type. */
function buildApprovalSettings(file: ParsedFile | undefined, raw: Raw, environment: Environment, problems: Problems): ApprovalSettings | undefined {
  if (raw === undefined || file === undefined) return DEFAULT_APPROVAL_SETTINGS;
  let ok = true;
  const problem = (path: (string | number)[], message: string, atKey = false): void => {
    problems.add(file, ['gateway', 'approvals', ...path], message, atKey);
    ok = false;
  };
  const channels: ApprovalChannelSetting[] = (raw.channels ?? []).map((c: Raw, i: number) => {
    const at = ['channels', i];
    if (c.type === 'webhook') {
      if ((c.url === undefined) === (c.url_env === undefined)) problem(at, 'a webhook needs exactly one of "url" and "url_env"');
      if (c.secret_env === undefined) problem(at, 'a webhook needs "secret_env" (the variable holding its signing secret)');
      if (environment === 'production' && typeof c.url === 'string' && !c.url.startsWith('https://')) problem([...at, 'url'], 'must use https in production');
      if (c.signing_secret_env !== undefined) problem([...at, 'signing_secret_env'], 'only Slack channels take interactions', true);
      if (c.approvers !== undefined) problem([...at, 'approvers'], 'only Slack channels take interactions', true);
    } else {
      // A Slack incoming-webhook URL is itself a credential: it never goes in a file.
      if (c.url !== undefined) problem([...at, 'url'], 'a Slack webhook URL is a secret: give the variable that holds it in "url_env"', true);
      if (c.url_env === undefined) problem(at, 'a Slack channel needs "url_env"');
      if (c.secret_env !== undefined) problem([...at, 'secret_env'], 'not used by Slack channels', true);
      // Buttons without a mapping would let nobody decide; a mapping without the secret could not be trusted.
      if ((c.signing_secret_env === undefined) !== (c.approvers === undefined)) problem(at, 'Slack buttons need both "signing_secret_env" and "approvers"');
    }
    return {
      type: c.type,
      url: c.url,
      urlEnv: c.url_env,
      secretEnv: c.secret_env,
      groups: c.groups,
      signingSecretEnv: c.signing_secret_env,
      approvers: c.approvers === undefined ? undefined : chatApprovers(c.approvers),
      maxAttempts: c.max_attempts ?? 5,
      backoffMs: c.backoff ? parseDuration(c.backoff) : 1_000,
    };
  });
  if (!ok) return undefined;
  return {
    backend: raw.backend ?? DEFAULT_APPROVAL_SETTINGS.backend,
    postgres: { url: raw.postgres?.url },
    maxPendingPerAgent: raw.max_pending_per_agent ?? DEFAULT_APPROVAL_SETTINGS.maxPendingPerAgent,
    maxPendingPerTenant: raw.max_pending_per_tenant ?? DEFAULT_APPROVAL_SETTINGS.maxPendingPerTenant,
    links: { enabled: raw.links?.enabled ?? true, baseUrl: raw.links?.base_url },
    channels,
    callback: raw.callback === undefined ? undefined : { secretEnv: raw.callback.secret_env, approvers: chatApprovers(raw.callback.approvers) },
  };
}

/** A schema-checked `approvers` object as a Map (chat user ids are looked up from requests). */
function chatApprovers(raw: Record<string, Raw>): ChatApprovers {
  return new Map(Object.entries(raw).map(([id, a]) => [id, { subject: a.subject, groups: a.groups, tenant: a.tenant }]));
}

/** `gateway.secrets.sources`: default the store, then the environment; each source at most once. */
function buildSecretSources(root: string, file: ParsedFile | undefined, raw: Raw, problems: Problems): SecretSourceSetting[] | undefined {
  if (raw === undefined || file === undefined) return [{ kind: 'store' }, { kind: 'env' }];
  const sources: SecretSourceSetting[] = [];
  const seen = new Set<string>();
  let ok = true;
  (raw as Raw[]).forEach((item, i) => {
    const source: SecretSourceSetting = typeof item === 'string' ? { kind: item as 'store' | 'env' } : { kind: 'files', dir: resolve(root, item.files) };
    const key = source.kind === 'files' ? `files:${source.dir}` : source.kind;
    if (seen.has(key)) {
      problems.add(file, ['gateway', 'secrets', 'sources', i], 'this source is listed twice');
      ok = false;
    }
    seen.add(key);
    sources.push(source);
  });
  return ok ? sources : undefined;
}

/** Agent tokens are meant to be short-lived: an hour unless the issuer says otherwise. */
const DEFAULT_MAX_TTL_MS = 3_600_000;
/** A week: beyond that a token is a long-lived credential, which Valet exists to avoid. */
const MAX_MAX_TTL_MS = 7 * 86_400_000;

function buildIssuer(root: string, file: ParsedFile, i: number, raw: Raw, problems: Problems): IssuerConfig | undefined {
  const at = ['issuers', i];
  const sources = ['secret', 'public_key_file', 'jwks_file', 'jwks_url'].filter((k) => raw[k] !== undefined);
  if (sources.length !== 1) {
    problems.add(file, at, `exactly one of secret, public_key_file, jwks_file, jwks_url is required (found ${sources.length})`);
    return undefined;
  }
  const algorithms: string[] = raw.algorithms;
  const symmetric = algorithms.filter((a) => SYMMETRIC.has(a));
  if (raw.secret !== undefined && symmetric.length !== algorithms.length) {
    problems.add(file, [...at, 'algorithms'], 'a shared secret only verifies HS* algorithms');
    return undefined;
  }
  if (raw.secret === undefined && symmetric.length > 0) {
    // A public key must never be usable as an HMAC secret (the RS256 → HS256 confusion).
    problems.add(file, [...at, 'algorithms'], 'HS* algorithms need a shared secret, not a public key');
    return undefined;
  }
  const maxTtlMs = raw.max_ttl === undefined ? DEFAULT_MAX_TTL_MS : parseDuration(raw.max_ttl);
  if (maxTtlMs < 1000 || maxTtlMs % 1000 !== 0 || maxTtlMs > MAX_MAX_TTL_MS) {
    problems.add(file, [...at, 'max_ttl'], 'must be whole seconds, from 1s to 7d');
    return undefined;
  }
  let key: IssuerKey;
  if (raw.secret !== undefined) key = { kind: 'secret', env: raw.secret.env, generate: raw.secret.generate ?? false };
  else if (raw.public_key_file !== undefined) key = { kind: 'public_key_file', path: resolve(root, raw.public_key_file) };
  else if (raw.jwks_file !== undefined) key = { kind: 'jwks_file', path: resolve(root, raw.jwks_file) };
  else key = { kind: 'jwks_url', url: raw.jwks_url };
  return {
    name: raw.name,
    issuer: raw.issuer,
    audience: typeof raw.audience === 'string' ? [raw.audience] : raw.audience,
    algorithms,
    clockSkewS: raw.clock_skew_s ?? 30,
    maxTtlS: maxTtlMs / 1000,
    key,
    claims: {
      ...DEFAULT_CLAIMS,
      ...(raw.claims ?? {}),
      userRoles: raw.claims?.user_roles ?? DEFAULT_CLAIMS.userRoles,
    },
  };
}

function buildUpstream(file: ParsedFile, i: number, raw: Raw, problems: Problems): UpstreamConfig | undefined {
  const at = ['upstreams', i];
  if (raw.stdio !== undefined) {
    // Launched by Valet: its loopback address and the bridge's own token are known only at start
    // (main.ts); until then it is described by a placeholder origin and the token's reserved name.
    raw = { ...raw, origin: 'http://127.0.0.1', credential: { scheme: 'bearer', secret: stdioSecret(raw.name) } };
  }
  let origin: URL;
  try {
    origin = new URL(raw.origin);
  } catch {
    problems.add(file, [...at, 'origin'], 'not a valid URL');
    return undefined;
  }
  if (origin.username || origin.password || origin.search || origin.hash || (origin.pathname !== '/' && origin.pathname !== '')) {
    problems.add(file, [...at, 'origin'], 'must be scheme://host[:port] only (no path, query, fragment or credentials)');
    return undefined;
  }
  const credential = withProvider(file, [...at, 'credential'], raw.name, raw.credential, buildCredential(file, [...at, 'credential'], { ...raw.credential, ...(raw.credential?.provider !== undefined && { secret: providedSecret(raw.name) }) }, problems), problems);
  // A signature scoped to another region than the host's is refused by AWS on every request.
  const hostRegion = credential.scheme === 'aws_sigv4' && credential.region !== '' ? awsHostRegion(origin.hostname) : undefined;
  if (credential.scheme === 'aws_sigv4' && hostRegion !== undefined && hostRegion !== credential.region) {
    problems.add(file, [...at, 'credential', 'region'], `"${credential.region}" is not the region of ${origin.hostname} (${hostRegion})`);
  }
  if (raw.audit_args !== undefined && raw.kind !== 'mcp') problems.add(file, [...at, 'audit_args'], 'only an MCP upstream (kind: mcp) keeps arguments per tool here; declare a tool with audit_args instead', true);
  const agentTokenHeader = (raw.agent_token?.header ?? 'authorization').toLowerCase();
  const scrubResponses: boolean = raw.scrub_responses ?? true;
  const headers = buildHeaderLists(file, at, raw, { agentTokenHeader, credential }, scrubResponses, problems);
  const defaultHeaders = Object.entries((raw.default_headers ?? {}) as Record<string, string>).map(([name, value]): [string, string] => [name.toLowerCase(), value]);
  for (const [name] of defaultHeaders) {
    const kind = classifyRequestHeader(name, { agentTokenHeader, credential });
    if (kind !== 'ordinary') problems.add(file, [...at, 'default_headers', name], `cannot default "${name}": it ${NEVER_FORWARDED[kind] ?? 'is a request-steering header'}`, true);
  }
  return {
    name: raw.name,
    origin: origin.origin,
    agentTokenHeader,
    agentTokenQuery: raw.agent_token?.query,
    ...(raw.agent_token?.basic !== undefined && { agentTokenBasic: raw.agent_token.basic }),
    ...(raw.kind === 'mcp' && { kind: 'mcp' as const }),
    ...(raw.llm !== undefined && { llm: raw.llm as LlmSetting }),
    ...(raw.stdio !== undefined && {
      stdio: { command: raw.stdio.command, args: raw.stdio.args ?? [], env: raw.stdio.env ?? {}, cwd: raw.stdio.cwd },
    }),
    ...(raw.audit_args !== undefined && raw.kind === 'mcp' && { auditArgs: raw.audit_args as Record<string, string[]> }),
    // An MCP upstream's refusals are JSON-RPC errors its client understands.
    dialect: raw.dialect ?? (raw.kind === 'mcp' ? 'jsonrpc' : 'generic'),
    listen: raw.listen === undefined ? undefined : { host: raw.listen.host, port: raw.listen.port },
    hosts: ((raw.hosts ?? []) as string[]).map((h) => h.toLowerCase()),
    ...(defaultHeaders.length > 0 && { defaultHeaders }),
    credential,
    scrubResponses,
    allowSteeringHeaders: headers.allow,
    forwardHeaders: headers.only,
    timeouts: {
      connectMs: raw.timeouts?.connect_ms ?? 10_000,
      headersMs: raw.timeouts?.headers_ms ?? 120_000,
      bodyMs: raw.timeouts?.body_ms ?? 300_000,
    },
    connections: raw.connections ?? 64,
  };
}

/** Why a header class can never be forwarded from the agent, for config errors. */
const NEVER_FORWARDED: Partial<Record<HeaderClass, string>> = {
  credential: 'carries a credential (an API key, the agent token or what this upstream injects); an agent\'s copy is never forwarded',
  'hop-by-hop': 'describes one hop (RFC 9110 §7.6.1); it is never forwarded',
  valet: 'is set or stripped by Valet itself',
};

/**
 * `allow_steering_headers` and `forward_headers`, lower-cased. Only request-steering headers can be
 * allowed back; `forward_headers` cannot name a header Valet would strip anyway, so that the list
 * says exactly what the upstream may receive.
 */
function buildHeaderLists(
  file: ParsedFile,
  at: (string | number)[],
  raw: Raw,
  upstream: Pick<UpstreamConfig, 'agentTokenHeader' | 'credential'>,
  scrubResponses: boolean,
  problems: Problems,
): { allow: string[]; only: string[] | undefined } {
  const lower = (key: string): string[] => {
    const seen = new Set<string>();
    ((raw[key] ?? []) as string[]).forEach((name, j) => {
      const n = name.toLowerCase();
      if (seen.has(n)) problems.add(file, [...at, key, j], `"${n}" is given twice (header names ignore case)`);
      seen.add(n);
    });
    return [...seen];
  };
  const allow = lower('allow_steering_headers');
  allow.forEach((name) => {
    const kind = classifyRequestHeader(name, upstream);
    if (kind === 'steering') return;
    const why = NEVER_FORWARDED[kind] ?? 'is not a request-steering header; it is forwarded without being allowed';
    problems.add(file, [...at, 'allow_steering_headers', indexOf(raw.allow_steering_headers, name)], `cannot allow "${name}": it ${why}`);
  });
  if (raw.forward_headers === undefined) return { allow, only: undefined };
  const only = lower('forward_headers');
  only.forEach((name) => {
    const kind = classifyRequestHeader(name, upstream);
    let why = NEVER_FORWARDED[kind];
    if (kind === 'steering' && !allow.includes(name)) why = 'is a request-steering header: list it in allow_steering_headers too';
    else if (scrubResponses && SCRUB_DROP.includes(name)) why = 'is dropped while scrub_responses is on';
    if (why !== undefined) problems.add(file, [...at, 'forward_headers', indexOf(raw.forward_headers, name)], `cannot forward "${name}": it ${why}`);
  });
  return { allow, only };
}

/** Where a (lower-cased) header name first appears in a raw list. */
function indexOf(list: readonly string[], name: string): number {
  return list.findIndex((n) => n.toLowerCase() === name);
}

/** Keys each credential scheme takes besides `scheme` and `secret`. */
const SCHEME_KEYS: Record<string, readonly string[]> = {
  bearer: [],
  header: ['header', 'prefix', 'value'],
  basic: ['username'],
  query: ['param'],
  headers: ['headers'],
  aws_sigv4: ['service', 'region', 'access_key_id', 'secret_access_key', 'session_token', 'assume_role', 'unsigned_payload'],
};
/** Every key some scheme takes: a key not taken by the scheme written is reported. */
const ALL_SCHEME_KEYS = [...new Set(Object.values(SCHEME_KEYS).flat())];

/**
 * The credential as injected. `header` with `value` is shorthand for `headers` with one entry, so
 * it is stored that way; the other schemes are stored as written.
 */
/** The keys each provider kind takes besides `kind` (those marked `*` are required). */
const PROVIDER_KEYS: Record<Exclude<ProviderKind, 'aws_assume_role'>, readonly string[]> = {
  oauth2_client_credentials: ['token_url*', 'client_id*', ...clientKeys(), 'scopes', 'resource', 'audience'],
  oauth2_refresh_token: ['token_url*', 'client_id*', ...clientKeys(), 'refresh_token*', 'scopes'],
  oauth2_jwt_bearer: ['token_url', 'private_key*', 'issuer', 'subject', 'audience', 'scopes', 'key_id', 'algorithm'],
  github_app: ['app_id*', 'private_key*', 'installation_id*', 'api_url'],
  oauth2_token_exchange: ['token_url*', 'client_id', ...clientKeys(), 'audience', 'resource', 'scopes', 'requested_token_type'],
  oauth2_user: ['authorize_url*', 'token_url*', 'client_id*', ...clientKeys(), 'scopes', 'authorize_params'],
};

function clientKeys(): string[] {
  return ['client_secret', 'client_auth', 'client_private_key', 'client_key_id'];
}

/** A credential whose value a provider makes (a token endpoint, an app key): only for `bearer` and `header` (one value injected). */
function withProvider(file: ParsedFile, at: (string | number)[], upstream: string, raw: Raw, credential: CredentialConfig, problems: Problems): CredentialConfig {
  const p = raw?.provider as Raw | undefined;
  if (p === undefined) return credential;
  if (credential.scheme !== 'bearer' && credential.scheme !== 'header') {
    problems.add(file, [...at, 'provider'], `a provider's token is injected with scheme "bearer" or "header", not "${credential.scheme}"`, true);
    return credential;
  }
  if (raw['secret'] !== undefined) problems.add(file, [...at, 'secret'], 'give "secret" or "provider", not both: the provider makes the value', true);
  const kind = p['kind'] as Exclude<ProviderKind, 'aws_assume_role'>;
  const keys = PROVIDER_KEYS[kind];
  const where = [...at, 'provider'];
  for (const k of keys) if (k.endsWith('*') && p[k.slice(0, -1)] === undefined) problems.add(file, where, `provider kind "${kind}" needs "${k.slice(0, -1)}"`, true);
  for (const k of Object.keys(p)) if (k !== 'kind' && !keys.includes(k) && !keys.includes(`${k}*`)) problems.add(file, [...where, k], `not used by provider kind "${kind}"`, true);
  const client = (): ClientAuth => {
    const method = (p['client_auth'] as ClientAuth['method'] | undefined) ?? (p['client_private_key'] !== undefined ? 'private_key_jwt' : p['client_secret'] !== undefined ? 'basic' : 'none');
    if ((method === 'basic' || method === 'post') && p['client_secret'] === undefined) problems.add(file, where, `client_auth "${method}" needs "client_secret"`, true);
    if (method === 'private_key_jwt' && p['client_private_key'] === undefined) problems.add(file, where, 'client_auth "private_key_jwt" needs "client_private_key"', true);
    if (method === 'none' && (p['client_secret'] !== undefined || p['client_private_key'] !== undefined)) problems.add(file, where, 'client_auth "none" sends no client secret or key', true);
    return { method, clientId: p['client_id'] ?? '', clientSecret: method === 'basic' || method === 'post' ? p['client_secret'] : undefined, privateKey: method === 'private_key_jwt' ? p['client_private_key'] : undefined, keyId: p['client_key_id'] };
  };
  const scopes: string[] = p['scopes'] ?? [];
  let provider: ProviderConfig;
  switch (kind) {
    case 'oauth2_client_credentials':
      provider = { kind, tokenUrl: p['token_url'], client: client(), scopes, resource: p['resource'], audience: p['audience'] };
      break;
    case 'oauth2_refresh_token':
      provider = { kind, tokenUrl: p['token_url'], client: client(), refreshToken: p['refresh_token'], scopes };
      break;
    case 'oauth2_jwt_bearer':
      provider = { kind, tokenUrl: p['token_url'], privateKey: p['private_key'], issuer: p['issuer'], subject: p['subject'], audience: p['audience'], scopes, keyId: p['key_id'], algorithm: p['algorithm'] ?? 'RS256' };
      break;
    case 'github_app':
      provider = { kind, appId: String(p['app_id']), privateKey: p['private_key'], installationId: String(p['installation_id']), apiUrl: String(p['api_url'] ?? 'https://api.github.com').replace(/\/+$/, '') };
      break;
    case 'oauth2_token_exchange':
      provider = { kind, tokenUrl: p['token_url'], client: client(), audience: p['audience'], resource: p['resource'], scopes, requestedTokenType: p['requested_token_type'] };
      break;
    case 'oauth2_user':
      provider = { kind, authorizeUrl: p['authorize_url'], tokenUrl: p['token_url'], client: client(), scopes, authorizeParams: p['authorize_params'] ?? {} };
      break;
  }
  return { ...credential, secret: providedSecret(upstream), provider };
}

function buildCredential(file: ParsedFile, at: (string | number)[], c: Raw, problems: Problems): CredentialConfig {
  for (const k of ALL_SCHEME_KEYS) {
    if (c[k] !== undefined && !SCHEME_KEYS[c.scheme]?.includes(k)) problems.add(file, [...at, k], `not used by scheme "${c.scheme}"`, true);
  }
  const injected: InjectedHeader[] = [];
  let valid = true;
  const addHeader = (name: string, text: string, where: (string | number)[]): void => {
    const lower = name.toLowerCase();
    const parsed = parseTemplate(text, c.secret);
    let problem: string | undefined;
    if (NOT_INJECTABLE.has(lower)) problem = `Valet cannot inject "${lower}": it sets or strips that header itself`;
    else if (injected.some((h) => h.name === lower)) problem = `header "${lower}" is given twice (header names ignore case)`;
    else if ('error' in parsed) problem = parsed.error;
    else injected.push({ name: lower, value: parsed.template });
    if (problem !== undefined) {
      problems.add(file, where, problem, true);
      valid = false;
    }
  };
  switch (c.scheme) {
    case 'header': {
      if (c.header === undefined) {
        problems.add(file, at, 'scheme "header" needs "header"');
        return { scheme: 'header', header: '', prefix: '', secret: c.secret };
      }
      if (c.value === undefined) {
        if (NOT_INJECTABLE.has(c.header.toLowerCase())) problems.add(file, [...at, 'header'], `Valet cannot inject "${c.header.toLowerCase()}": it sets or strips that header itself`);
        return { scheme: 'header', header: String(c.header).toLowerCase(), prefix: c.prefix ?? '', secret: c.secret };
      }
      if (c.prefix !== undefined) problems.add(file, [...at, 'prefix'], 'give "prefix" or "value", not both', true);
      addHeader(c.header, c.value, [...at, 'value']);
      break;
    }
    case 'headers':
      if (c.headers === undefined) {
        problems.add(file, at, 'scheme "headers" needs "headers"');
        return { scheme: 'headers', headers: [] };
      }
      for (const [name, text] of Object.entries(c.headers)) addHeader(name, text as string, [...at, 'headers', name]);
      break;
    case 'query':
      if (c.param === undefined) problems.add(file, at, 'scheme "query" needs "param"');
      return { scheme: 'query', param: c.param, secret: c.secret };
    case 'basic':
      return { scheme: 'basic', username: c.username, secret: c.secret };
    case 'aws_sigv4':
      return buildAwsSigV4(file, at, c, problems);
    default:
      return { scheme: 'bearer', secret: c.secret };
  }
  // Templates: a credential with no secret in it, or a `secret` nothing uses, is a mistake.
  const credential: CredentialConfig = { scheme: 'headers', headers: injected };
  if (!valid) return credential;
  const used = secretNames(credential);
  if (used.length === 0) problems.add(file, at, 'no header uses a secret: add {secret} or {secret:NAME} to a value');
  if (c.secret !== undefined && !used.includes(c.secret)) problems.add(file, [...at, 'secret'], `"${c.secret}" is not used: write {secret} in a value`, true);
  return credential;
}

/** `aws_sigv4`: the key names and what they sign for; each request is signed with them (credentials/sigv4.ts). */
function buildAwsSigV4(file: ParsedFile, at: (string | number)[], c: Raw, problems: Problems): CredentialConfig {
  for (const k of ['service', 'region', 'access_key_id', 'secret_access_key']) if (c[k] === undefined) problems.add(file, at, `scheme "aws_sigv4" needs "${k}"`);
  if (c.secret !== undefined) problems.add(file, [...at, 'secret'], 'not used by scheme "aws_sigv4": it names its secrets in access_key_id, secret_access_key and session_token', true);
  const r = c.assume_role as Raw;
  let stsEndpoint = `https://sts.${String(c.region)}.amazonaws.com`;
  if (r?.sts_endpoint !== undefined) {
    const url = URL.canParse(r.sts_endpoint) ? new URL(r.sts_endpoint) : undefined;
    if (url === undefined || url.username || url.password || url.search || url.hash || (url.pathname !== '/' && url.pathname !== '')) {
      problems.add(file, [...at, 'assume_role', 'sts_endpoint'], 'must be scheme://host[:port] only (no path, query, fragment or credentials)');
    } else stsEndpoint = url.origin;
  }
  return {
    scheme: 'aws_sigv4',
    service: c.service ?? '',
    region: c.region ?? '',
    accessKeyId: c.access_key_id ?? '',
    secretAccessKey: c.secret_access_key ?? '',
    sessionToken: c.session_token,
    assumeRole: r === undefined ? undefined : { roleArn: r.role_arn, sessionName: r.session_name ?? 'valet', externalId: r.external_id, durationS: r.duration_s, stsEndpoint },
    // S3 takes UNSIGNED-PAYLOAD, so uploads stream; other services get the body's hash, read whole.
    unsignedPayload: c.unsigned_payload ?? c.service === 's3',
  };
}

/** The region an AWS host name carries (`bedrock-runtime.eu-west-1.amazonaws.com`), if any. */
function awsHostRegion(host: string): string | undefined {
  return /\.([a-z]{2}(?:-[a-z]+)+-[0-9]{1,2})\.amazonaws\.com(?:\.cn)?$/.exec(host)?.[1];
}

/** Tool path templates: literal segments and `{name}` parameters, each a whole segment. */
function checkPathTemplate(p: string): string | undefined {
  const seen = new Set<string>();
  for (const s of p.split('/').slice(1)) {
    const m = /^\{([A-Za-z_][A-Za-z0-9_]*)\}$/.exec(s);
    if (m) {
      if (seen.has(m[1] as string)) return `parameter "{${m[1]}}" appears twice`;
      seen.add(m[1] as string);
    } else if (/[{}*%?#\\]/.test(s) || s === '.' || s === '..') {
      return `segment "${s}" must be literal text or a whole "{name}"`;
    }
  }
  return undefined;
}

/** `15m` → 900000. The schema has already checked the form. */
export function parseDuration(d: string): number {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(d);
  if (!m) throw new TypeError(`not a duration: ${d}`);
  return Number(m[1]) * { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 'ms' | 's' | 'm' | 'h' | 'd'];
}

function location(file: ParsedFile, path: readonly (string | number)[]): Location {
  const { line, column } = locate(file, path, false);
  return { file: file.name, line, column, path: formatPath(path) };
}

/** Path patterns: literal segments, `*` (one segment) or a final `**` (any remainder). */
function checkPathPattern(p: string): string | undefined {
  const segments = p.split('/').slice(1);
  for (const [i, s] of segments.entries()) {
    if (s === '**' && i !== segments.length - 1) return '"**" may only be the last segment';
    if (s === '.' || s === '..') return 'dot segments are not allowed in patterns';
    if (s !== '*' && s !== '**' && /[*%?#\\]/.test(s)) return `segment "${s}" may not contain *, %, ?, # or \\`;
  }
  return undefined;
}

function reportSchemaError(problems: Problems, file: ParsedFile, e: ErrorObject): void {
  const path = e.instancePath.split('/').slice(1).map((s) => {
    const unescaped = s.replace(/~1/g, '/').replace(/~0/g, '~');
    return /^\d+$/.test(unescaped) ? Number(unescaped) : unescaped;
  });
  // A key that fails `propertyNames` is reported once, below, at the key itself.
  if (e.propertyName !== undefined && e.keyword !== 'propertyNames') return;
  switch (e.keyword) {
    case 'propertyNames': {
      const key = (e.params as { propertyName: string }).propertyName;
      problems.add(file, [...path, key], `"${key}" is not a valid name here`, true);
      return;
    }
    case 'additionalProperties': {
      const key = (e.params as { additionalProperty: string }).additionalProperty;
      problems.add(file, [...path, key], 'unknown key', true);
      return;
    }
    case 'required':
      problems.add(file, path, `missing required key "${(e.params as { missingProperty: string }).missingProperty}"`);
      return;
    case 'enum':
      problems.add(file, path, `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}`);
      return;
    case 'oneOf':
    case 'if':
      return; // the branch errors say more
    default:
      problems.add(file, path, e.message ?? 'invalid');
  }
}

function locate(file: ParsedFile, path: readonly (string | number)[], atKey: boolean): { line: number; column: number } {
  let offset = 0;
  if (atKey && path.length > 0) {
    const parent = file.doc.getIn(path.slice(0, -1), true) as Node | undefined;
    if (isMap(parent)) {
      const pair = parent.items.find((it) => isPair(it) && isScalar(it.key) && it.key.value === path[path.length - 1]);
      if (pair && isScalar(pair.key) && pair.key.range) offset = pair.key.range[0];
    }
  }
  if (offset === 0) {
    for (let n = path.length; n >= 0; n--) {
      const node = (n === 0 ? file.doc.contents : file.doc.getIn(path.slice(0, n), true)) as Node | undefined;
      if (node && typeof node === 'object' && 'range' in node && node.range) {
        offset = node.range[0];
        break;
      }
    }
  }
  const pos = file.lines.linePos(offset);
  return { line: pos.line, column: pos.col };
}

function formatPath(path: readonly (string | number)[]): string {
  return path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${p}`)).join('').replace(/^\./, '');
}

/**
 * A context data file (JSON or YAML: a map of key to value), read with the policy so its content
 * is part of the policy version: a change reloads like a rule change, and one that does not parse
 * is refused like a broken rule.
 */
function readContextFile(root: string, path: string, hash: Hash, problem: (message: string) => void): ReadonlyMap<string, unknown> | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    problem(`cannot read ${relative(root, path)} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    return undefined;
  }
  hash.update('context\0').update(relative(root, path)).update('\0').update(text).update('\0');
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: false });
  const first = doc.errors[0];
  if (first !== undefined) {
    problem(`${relative(root, path)} does not parse: ${first.message.split('\n')[0] ?? first.message}`);
    return undefined;
  }
  const data: unknown = doc.toJS({ maxAliasCount: 100 });
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    problem(`${relative(root, path)} must be a map of key to value`);
    return undefined;
  }
  return new Map(Object.entries(data as Record<string, unknown>));
}

function listYaml(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir).sort()) {
    if (entry.startsWith('.')) continue;
    const abs = join(dir, entry);
    if (statSync(abs).isDirectory()) out.push(...listYaml(abs));
    else if (/\.ya?ml$/.test(entry)) out.push(abs);
  }
  return out;
}

function deepFreeze<T>(value: T): T {
  if (value instanceof Map) {
    for (const v of value.values()) deepFreeze(v);
    // Maps cannot be frozen in place; block the mutators instead.
    const blocked = (): never => {
      throw new TypeError('configuration is frozen');
    };
    Object.assign(value, { set: blocked, delete: blocked, clear: blocked });
  } else if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return Object.freeze(value);
}
