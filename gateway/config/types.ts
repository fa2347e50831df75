import type { ProviderConfig } from '../credentials/types.js';
import type { AwsSigV4Config } from '../credentials/sigv4.js';
import type { Dialect } from '../server/dialects.js';
import type { LlmSetting } from '../llm/types.js';
export type Environment = 'development' | 'staging' | 'production';

export interface GatewaySettings {
  readonly environment: Environment;
  readonly listen: { readonly host: string; readonly port: number };
  readonly shutdownGraceMs: number;
  /** A rate limit's `retry-after` above this is not sent; the agent's SDK is told not to retry (`gateway.max_retry_after_s`). */
  readonly maxRetryAfterS: number;
  readonly maxHeaderBytes: number;
  /** Largest JSON or form body Valet buffers to read arguments from. */
  readonly maxBodyBytes: number;
  /** IANA time zone for `time.*` in conditions. */
  readonly timezone: string;
  /** The admin plane: its own listener (loopback by default) and the audience its tokens carry. */
  readonly admin: {
    readonly listen: { readonly host: string; readonly port: number };
    readonly audience: string;
    /** `scheme://host[:port]` as people's browsers reach the admin plane (connect pages, OAuth redirect URIs); default its listener's URL. */
    readonly publicUrl?: string | undefined;
  };
  /**
   * Where upstream credentials come from, asked in this order. The loader always sets it; absent
   * (settings built in code) means the default, the store and then the environment.
   */
  readonly secrets?: {
    readonly sources: readonly SecretSourceSetting[];
    /** Where the `store` source keeps its ciphertexts; absent means `sqlite` (secrets.db). */
    readonly backend?: StateBackend;
    readonly postgres?: PostgresSetting;
  };
  /** Human approvals of escalated requests. The loader always sets it; absent means the defaults. */
  readonly approvals?: ApprovalSettings;
  /** Rate limits, budgets and call history: in the data directory or in Redis. The loader always sets it; absent means {@link DEFAULT_COUNTERS}. */
  readonly counters?: CounterSettings;
  /** The audit log: durability, retention, anchoring. The loader always sets it; absent means {@link DEFAULT_AUDIT}. */
  readonly audit?: AuditSettings;
  /**
   * What one agent may hold of the data-plane listener: deadlines, the streamed-body limit and
   * connection caps. The loader always sets it; absent means {@link DEFAULT_LISTENER}.
   */
  readonly listener?: ListenerSettings;
  /** `gateway.policy`. The loader always sets it; absent means every setting's default. */
  readonly policy?: PolicySettings;
  /** `gateway.llm`: prices and how LLM calls are metered. The loader always sets it; absent means {@link DEFAULT_LLM}. */
  readonly llm?: LlmSettings;
}

/** A price override, per million tokens, in the price table's field names (docs/llm.md). */
export interface PriceOverride {
  readonly input?: number;
  readonly output?: number;
  readonly cached?: number;
  readonly cache_write?: number;
  readonly reasoning?: number;
  readonly max_output?: number;
}

/** `gateway.llm` (docs/llm.md). */
export interface LlmSettings {
  /** Prices per model over the shipped table (new models, negotiated prices). */
  readonly prices: Readonly<Record<string, PriceOverride>>;
  /**
   * A metered call for a model no price is known for: refused (`deny`), held for a person
   * (`escalate`, with `approval`), or charged at the table's highest price of every kind (`ceiling`).
   */
  readonly unknownModel: 'deny' | 'escalate' | 'ceiling';
  /** Who approves calls for unknown models (required with `unknown_model: escalate`). */
  readonly approval: ApprovalConfig | undefined;
  /** What happens when a response passes the output its call reserved: `charge` it, or `cut` the stream with a clean end. */
  readonly overrun: 'charge' | 'cut';
  /**
   * The output reserved for a call that sets no maximum, when the price table knows none for its
   * model (undefined: the model's own maximum from the table).
   */
  readonly defaultMaxOutput: number | undefined;
  /** Reserved for a batch whose input Valet cannot see (an uploaded file), in the table's currency; undefined: refused under a cost or token budget. */
  readonly opaqueBatchCost: number | undefined;
  /** The largest body of a metered call Valet reads whole (prompts carry images); never below `gateway.max_body_bytes`. */
  readonly maxBodyBytes: number;
}

export const DEFAULT_LLM: LlmSettings = { prices: {}, unknownModel: 'ceiling', approval: undefined, overrun: 'charge', defaultMaxOutput: undefined, opaqueBatchCost: undefined, maxBodyBytes: 33_554_432 };

/** `gateway.policy`: how identities are checked against the agent registry. */
export interface PolicySettings {
  /** Refuse tokens of agents the `agents:` registry does not list (default false). */
  readonly requireRegisteredAgents: boolean;
  /** `gateway.policy.sessions`: the loader always sets it; absent means the token's session and a day's memory. */
  readonly sessions?: SessionSettings;
}

/** Where an agent's session comes from, for call sequences and `session` counters (docs/policy.md#sessions-and-call-sequences). */
export interface SessionSettings {
  /** A request header naming the session within the agent's own (a token's `sid`/`jti` otherwise). */
  readonly header: string | undefined;
  /** How long the calls of an idle session are remembered. */
  readonly ttlMs: number;
}

/** How long an idle session's calls are remembered unless `gateway.policy.sessions.ttl` says otherwise. */
export const DEFAULT_SESSION_TTL_MS = 24 * 3_600_000;

/** One step of a call sequence: a call of `tool` in the same session (and, with `withinMs`, that recent; with `same`, on the same argument values). */
export interface SequenceStep {
  readonly tool: string;
  readonly withinMs?: number;
  readonly same?: readonly string[];
}

/** `gateway.timeouts`, `gateway.max_stream_body_bytes`, `gateway.max_connections*` (docs/configuration.md). */
export interface ListenerSettings {
  /** From a connection's first byte (or its opening) until the request head is complete. */
  readonly headersTimeoutMs: number;
  /** Longest pause between two pieces of a request body while Valet is ready to read them. */
  readonly bodyIdleTimeoutMs: number;
  /** From the end of the request head until the whole body has arrived. */
  readonly bodyTimeoutMs: number;
  /** Largest body streamed through (bodies Valet buffers are also bounded by `maxBodyBytes`). */
  readonly maxStreamBodyBytes: number;
  /** Open data-plane connections in total; more are dropped on arrival. */
  readonly maxConnections: number;
  /** Open data-plane connections from one remote address; more are dropped on arrival. */
  readonly maxConnectionsPerClient: number;
}

export const DEFAULT_LISTENER: ListenerSettings = {
  headersTimeoutMs: 10_000,
  bodyIdleTimeoutMs: 30_000,
  bodyTimeoutMs: 300_000,
  maxStreamBodyBytes: 67_108_864,
  maxConnections: 10_000,
  maxConnectionsPerClient: 256,
};

/** `gateway.audit` (docs/audit.md). */
export interface AuditSettings {
  /** Forward even when a request's decision record cannot be made durable (default false: refuse with 503). */
  readonly failOpen: boolean;
  /** Where the log lives: `sqlite` (the data directory, default) or `postgres` (shared by a fleet; `VALET_POSTGRES_URL` selects it too). */
  readonly backend: 'sqlite' | 'postgres';
  /** `gateway.audit.postgres`: the database URL, the schema (default `public`), this instance's name (default: the host name). */
  readonly postgres: { readonly url: string | undefined; readonly schema: string | undefined; readonly instance: string | undefined };
  /**
   * Where the writer runs: its own thread, or inline on the request thread (no hand-off between
   * threads; at `strict` the fsync runs in libuv's thread pool). `auto` (default): inline when the
   * process can use one CPU only and the durability is `crash` or `async`, where a thread could not
   * run beside the requests anyway; else a thread (gateway/audit/sqlite/writer.ts `writerMode`).
   */
  readonly writer: 'auto' | 'thread' | 'inline';
  /** What a forwarded call's decision row has survived before the call is forwarded (docs/audit.md#durability-levels). */
  readonly durability: AuditDurability;
  /** How long a write waits for another process's lock on the audit database (ms). */
  readonly busyTimeoutMs: number;
  /** Delete rows older than this many days; undefined keeps them. */
  readonly retentionDays: number | undefined;
  /** Per-tenant overrides of `retentionDays`; null keeps that tenant's rows. */
  readonly tenantRetentionDays: Readonly<Record<string, number | null>>;
  readonly anchor: {
    /** How often the chain head is anchored (when it moved). */
    readonly intervalMs: number;
    /** Also hand each anchor (JSON on stdin) to this program. */
    readonly command: readonly string[] | undefined;
    /** Also POST each anchor (JSON) here. */
    readonly url: string | undefined;
  };
}

/**
 * `strict`: fsynced before the call is forwarded (survives a power loss). `crash`: in the WAL before
 * it is forwarded (survives a killed Valet; fsynced within a second). `async`: the call does not
 * wait for its row (a crash loses the rows not yet written).
 */
export type AuditDurability = 'strict' | 'crash' | 'async';

export const DEFAULT_AUDIT: AuditSettings = {
  failOpen: false,
  backend: 'sqlite',
  postgres: { url: undefined, schema: undefined, instance: undefined },
  writer: 'auto',
  durability: 'strict',
  busyTimeoutMs: 1000,
  retentionDays: undefined,
  tenantRetentionDays: {},
  anchor: { intervalMs: 60_000, command: undefined, url: undefined },
};

/** `gateway.counters`: where rate limits, budgets and call history are kept (docs/configuration.md). */
export interface CounterSettings {
  /** `sqlite`: counters.db in the data directory, one instance. `redis`: shared by every instance. */
  readonly backend: 'sqlite' | 'redis';
  readonly redis: {
    /** `redis://` or `rediss://`; `VALET_REDIS_URL` overrides it (and selects `redis`). */
    readonly url: string | undefined;
    /** Prepended to every key, so several fleets (or tests) share one Redis apart. */
    readonly prefix: string;
  };
  /** The default of every limit's and budget's `fail_open`: count on the instance alone while Redis is unreachable. */
  readonly failOpen: boolean;
}

export const DEFAULT_COUNTERS: CounterSettings = { backend: 'sqlite', redis: { url: undefined, prefix: 'valet:' }, failOpen: false };

/**
 * Where approvals or the secret store keep their state: `sqlite` in the data directory (one
 * instance), or `postgres`, shared by every instance of a fleet. `VALET_POSTGRES_URL`, when set,
 * overrides the URL and selects `postgres`.
 */
export type StateBackend = 'sqlite' | 'postgres';

/** `<kind>.postgres`: the connection, `postgres://` or `postgresql://` (may carry `options=-c search_path=…`). */
export interface PostgresSetting {
  readonly url: string | undefined;
}

/** `gateway.approvals`: where approvals are kept, caps on waiting approvals, links in notifications, notification channels. */
export interface ApprovalSettings {
  readonly backend: StateBackend;
  readonly postgres: PostgresSetting;
  readonly maxPendingPerAgent: number;
  readonly maxPendingPerTenant: number;
  /** Approve/deny links in notifications, pointing at `baseUrl` (default: the admin listener's URL). */
  readonly links: { readonly enabled: boolean; readonly baseUrl: string | undefined };
  readonly channels: readonly ApprovalChannelSetting[];
  /** The generic signed callback (`POST /api/chat/callback`) other chat tools decide through; undefined: off. */
  readonly callback: ChatCallbackSetting | undefined;
}

/**
 * A chat user who may decide approvals: the Valet identity their decisions count as. They act
 * like an admin token with the `approver` role and these groups (and tenant, if set).
 */
export interface ChatApprover {
  readonly subject: string;
  readonly groups: readonly string[];
  readonly tenant: string | undefined;
}

/** Chat user ids (Slack's `U…`, another tool's ids) to Valet identities; a Map, so no id can hit an object's prototype. */
export type ChatApprovers = ReadonlyMap<string, ChatApprover>;

/** `gateway.approvals.callback`: the variable holding the HMAC secret, and who may decide. */
export interface ChatCallbackSetting {
  readonly secretEnv: string;
  readonly approvers: ChatApprovers;
}

/** One notification channel; URLs and secrets that are secret come from environment variables. */
export interface ApprovalChannelSetting {
  readonly type: 'webhook' | 'slack';
  readonly url: string | undefined;
  readonly urlEnv: string | undefined;
  /** Webhook: the variable holding the HMAC signing secret. */
  readonly secretEnv: string | undefined;
  /** Only approvals for these approver groups (all when absent). */
  readonly groups: readonly string[] | undefined;
  /** Slack: the variable holding the Slack app's signing secret; set, messages carry Approve/Deny buttons. */
  readonly signingSecretEnv: string | undefined;
  /** Slack, with `signingSecretEnv`: who may press the buttons. */
  readonly approvers: ChatApprovers | undefined;
  readonly maxAttempts: number;
  readonly backoffMs: number;
}

export const DEFAULT_APPROVAL_SETTINGS: ApprovalSettings = {
  backend: 'sqlite',
  postgres: { url: undefined },
  maxPendingPerAgent: 20,
  maxPendingPerTenant: 200,
  links: { enabled: true, baseUrl: undefined },
  channels: [],
  callback: undefined,
};

/** One place credentials are looked up: the encrypted store, the environment, or a directory of files. */
export type SecretSourceSetting =
  | { readonly kind: 'store' }
  | { readonly kind: 'env' }
  | { readonly kind: 'files'; readonly dir: string };

export type IssuerKey =
  | { readonly kind: 'secret'; readonly env: string; readonly generate: boolean }
  | { readonly kind: 'public_key_file'; readonly path: string }
  | { readonly kind: 'jwks_file'; readonly path: string }
  | { readonly kind: 'jwks_url'; readonly url: string };

export interface ClaimNames {
  readonly tenant: string;
  readonly team: string;
  readonly roles: string;
  readonly environment: string;
  readonly user: string;
  readonly userRoles: string;
  /** Groups (approver groups on admin tokens); `groups` when absent. */
  readonly groups?: string;
}

export interface IssuerConfig {
  readonly name: string;
  readonly issuer: string;
  readonly audience: readonly string[];
  readonly algorithms: readonly string[];
  readonly clockSkewS: number;
  /** The longest lifetime (`exp` − `iat`, seconds) a token of this issuer may have. */
  readonly maxTtlS: number;
  readonly key: IssuerKey;
  readonly claims: ClaimNames;
}

/**
 * A header value as configured: literal text and secret placeholders, in order.
 * `token {secret}` → `['token ', { secret: 'GITHUB_TOKEN' }]`.
 */
export type Template = readonly (string | { readonly secret: string })[];

/** One header Valet sets on every request to an upstream, replacing any copy the agent sent. */
export interface InjectedHeader {
  /** Lower case. */
  readonly name: string;
  readonly value: Template;
}

/**
 * How the real credential is sent. `secret` names a secret (an environment variable today); the
 * `headers` scheme names its secrets inside its templates and may use several; `aws_sigv4` names
 * its keys and signs each request with them (credentials/sigv4.ts).
 * `secretNames()` in `config/credential.ts` lists every secret a credential uses.
 */
export type CredentialConfig =
  | { readonly scheme: 'bearer'; readonly secret: string; readonly provider?: ProviderConfig }
  | { readonly scheme: 'header'; readonly header: string; readonly prefix: string; readonly secret: string; readonly provider?: ProviderConfig }
  | { readonly scheme: 'basic'; readonly username: string | undefined; readonly secret: string }
  | { readonly scheme: 'query'; readonly param: string; readonly secret: string }
  | { readonly scheme: 'headers'; readonly headers: readonly InjectedHeader[] }
  | AwsSigV4Config;

export interface UpstreamConfig {
  readonly name: string;
  /** `scheme://host[:port]`, nothing else. */
  readonly origin: string;
  /** Lower-case header the upstream's SDK puts its API key in (`authorization` means Bearer). */
  readonly agentTokenHeader: string;
  /** Query parameter that may carry the agent token; off unless configured. */
  readonly agentTokenQuery: string | undefined;
  /** `Authorization: Basic` carries the agent token as its password or user name (SDKs that only do Basic); off unless configured. */
  readonly agentTokenBasic?: 'password' | 'username' | undefined;
  /** The API's error shape, in which Valet's own refusals for this upstream are written (dialects.ts). */
  readonly dialect: Dialect;
  /** `mcp`: a Model Context Protocol server (Streamable HTTP); JSON-RPC messages are described for policy (gateway/mcp). Absent: plain HTTP. */
  readonly kind?: 'mcp';
  /** An LLM API of this family: its calls are metered (tokens, cost) and count against usage budgets (gateway/llm). */
  readonly llm?: LlmSetting;
  /** MCP: a local server Valet launches and serves over Streamable HTTP (gateway/mcp/stdio.ts); `env` maps variables to secret names. */
  readonly stdio?: { readonly command: string; readonly args: readonly string[]; readonly env: Readonly<Record<string, string>>; readonly cwd: string | undefined };
  /** MCP: the arguments the audit row keeps, per tool (the server's name). */
  readonly auditArgs?: Readonly<Record<string, readonly string[]>>;
  /** A listener of its own that serves this upstream at its root (for SDKs that take no path prefix); host: `gateway.listen.host` when absent. */
  readonly listen: { readonly host: string | undefined; readonly port: number } | undefined;
  /** `Host` names (lower case, no port) that route to this upstream at its root on the main listener. */
  readonly hosts: readonly string[];
  /** Headers sent when the agent sent none by that name (lower-case name, value): an API version the SDK may choose. */
  readonly defaultHeaders?: readonly (readonly [string, string])[];
  readonly credential: CredentialConfig;
  /**
   * Redact copies of the injected secrets from response headers and bodies (default on). Absent
   * means on, so that an upstream built in code without the field is still scrubbed.
   */
  readonly scrubResponses?: boolean;
  /**
   * Request-steering headers (`STEERING` / `STEERING_PREFIX` in proxy/headers.ts) this upstream
   * takes from agents after all, lower case. Absent or empty: every steering header is stripped.
   */
  readonly allowSteeringHeaders?: readonly string[];
  /**
   * Strict mode: the only agent request headers forwarded (lower case), on top of what Valet adds.
   * Absent: every agent header Valet does not strip is forwarded.
   */
  readonly forwardHeaders?: readonly string[] | undefined;
  readonly timeouts: { readonly connectMs: number; readonly headersMs: number; readonly bodyMs: number };
  readonly connections: number;
}

/** Where a configuration item is written: for error messages and explanations. */
export interface Location {
  readonly file: string;
  readonly line: number;
  readonly column: number;
  /** The item's path in its file, e.g. `rules[3]`. */
  readonly path: string;
}

export type Scope = { readonly tenant?: string; readonly team?: string; readonly agent?: string };

/** What a rule, rate limit or budget applies to; every part given must match. */
export interface MatchConfig {
  readonly id: string;
  readonly description: string | undefined;
  /** The effective scope: the file's directory scope and the explicit `scope:` together. */
  readonly scope: Scope | undefined;
  /**
   * The scope the file's place implies (`agents/<id>`, `teams/<team>`, `tenants/<tenant>`);
   * absent for files elsewhere, whose rules are organisation-level unless `scope:` says otherwise.
   */
  readonly fileScope?: Scope;
  readonly upstream: string | undefined;
  readonly tools: readonly string[] | undefined;
  readonly methods: readonly string[] | undefined;
  readonly paths: readonly string[] | undefined;
  readonly roles: readonly string[] | undefined;
  readonly environments: readonly Environment[] | undefined;
  /** A CEL condition; compiled by the policy module. */
  readonly when: string | undefined;
  readonly at: Location;
  /** Lines of individual fields (`when`, `sum`, `key`), for CEL error messages. */
  readonly lines: Readonly<Record<string, number>>;
}

export interface ApprovalConfig {
  readonly group: string;
  readonly timeoutMs: number;
  readonly mode: 'hold' | 'async';
  /** Argument paths hidden from approvers and never stored (`card.number`, `items.*.iban`). */
  readonly redact?: readonly string[];
}

export interface RuleConfig extends MatchConfig {
  readonly effect: 'allow' | 'deny' | 'escalate';
  /** `shadow`: evaluated beside the enforced rules and recorded (audit `shadow`, a metric), never enforced. */
  readonly mode?: 'shadow';
  readonly reason: string | undefined;
  readonly approval: ApprovalConfig | undefined;
  /** Calls that must have succeeded earlier in the session; otherwise this rule denies. */
  readonly requires?: readonly SequenceStep[];
  /** Calls that, made earlier in the session, make this rule deny. */
  readonly blockedBy?: readonly SequenceStep[];
}

/** `response_rules`: what happens to an upstream's answer before the agent sees it (docs/policy.md#response-rules). */
export interface ResponseRuleConfig extends MatchConfig {
  /** `redact`: fields and patterns replaced; `block`: withheld, a coded error instead; `escalate`: held until a person releases it. */
  readonly effect: 'redact' | 'block' | 'escalate';
  /** Statuses it applies to (`200`, or a class `2xx`); absent: every status. */
  readonly status: readonly string[] | undefined;
  readonly redact: { readonly paths?: readonly string[]; readonly patterns?: readonly (string | { readonly regex: string })[]; readonly keep?: string } | undefined;
  readonly reason: string | undefined;
  /** `escalate`: who releases the response, and how long it is held (always `hold`: an answer cannot be fetched again). */
  readonly approval: ApprovalConfig | undefined;
}

export type CounterKey = 'agent' | 'team' | 'tenant' | 'user' | 'session' | 'upstream' | 'tool' | 'global' | { readonly cel: string };

export interface RateLimitConfig extends MatchConfig {
  readonly limit: number;
  readonly windowMs: number;
  readonly key: CounterKey;
  /** With shared counters (Redis) unreachable: count on this instance alone instead of refusing (503). */
  readonly failOpen?: boolean;
}

export interface BudgetConfig extends MatchConfig {
  /** CEL expression giving the amount this request spends (absent with `usage`). */
  readonly sum: string | undefined;
  /**
   * What LLM calls use, measured from their responses: `tokens` (every kind), or `cost` in the
   * price table's currency. Reserved before the call, settled to what it used (docs/llm.md).
   */
  readonly usage: 'tokens' | 'cost' | undefined;
  readonly limit: number;
  readonly windowMs: number;
  readonly key: CounterKey;
  /** With shared counters (Redis) unreachable: count on this instance alone instead of refusing (503). */
  readonly failOpen?: boolean;
}

export type ArgType = 'string' | 'int' | 'number' | 'bool';

/** A named operation on an upstream: policies speak of tools and arguments, not URLs. */
export interface ToolConfig {
  readonly name: string;
  readonly description: string | undefined;
  readonly upstream: string;
  readonly method: string;
  /** Path template; `{name}` is one segment, captured as an argument. */
  readonly path: string;
  /** Declared argument types; form values are converted, JSON values must already match. */
  readonly args: Readonly<Record<string, ArgType>>;
  /** Arguments whose values the audit row keeps (`audit_args`); none unless listed. */
  readonly auditArgs?: readonly string[];
  readonly at: Location;
}

/** Where `ctx.<name>` comes from: a static map file or an HTTP lookup, keyed per request. */
export interface ContextConfig {
  readonly name: string;
  readonly description: string | undefined;
  /** CEL giving the lookup key, e.g. `args.customer_id`. */
  readonly key: string;
  readonly upstream: string | undefined;
  readonly tools: readonly string[] | undefined;
  readonly file: string | undefined;
  /** The content of `file`, read and parsed with the rest of the policy (part of its version). */
  readonly entries: ReadonlyMap<string, unknown> | undefined;
  /** `{key}` is replaced by the URL-encoded key. */
  readonly url: string | undefined;
  readonly cacheTtlMs: number;
  readonly timeoutMs: number;
  readonly at: Location;
}

/** A policy test case written beside the policies (`valet policy test`). */
/** A request a policy test sends. */
export interface PolicyTestRequest {
  readonly upstream: string;
  readonly method: string;
  readonly path: string;
  readonly query?: Readonly<Record<string, string>>;
  readonly json?: unknown;
  readonly form?: string;
  readonly time?: string;
  readonly repeat?: number;
}

export interface PolicyTestConfig {
  readonly name: string;
  readonly identity: {
    readonly agent: string;
    readonly tenant?: string;
    readonly team?: string;
    readonly roles?: readonly string[];
    readonly env?: string;
    readonly user?: string;
    readonly user_roles?: readonly string[];
  };
  readonly request: PolicyTestRequest;
  /** Calls made earlier in the same session, each decided and (if allowed) recorded as answered 2xx. */
  readonly before?: readonly PolicyTestRequest[];
  readonly expect: { readonly effect: 'allow' | 'deny' | 'escalate' | 'rate_limited'; readonly rule?: string };
  readonly at: Location;
}

/** One entry of the `agents:` registry: where an agent belongs, whatever its token claims. */
export interface AgentRegistration {
  readonly id: string;
  readonly tenant: string | undefined;
  readonly team: string | undefined;
  readonly description: string | undefined;
  readonly at: Location;
}

/** The validated, frozen configuration; built once at start. */
export interface Config {
  readonly dir: string;
  /** Content hash of every file read, in order. */
  readonly version: string;
  readonly gateway: GatewaySettings;
  readonly issuers: readonly IssuerConfig[];
  readonly upstreams: ReadonlyMap<string, UpstreamConfig>;
  readonly tools: readonly ToolConfig[];
  readonly rules: readonly RuleConfig[];
  /** Rules on what comes back; code-built configs may omit them. */
  readonly responseRules?: readonly ResponseRuleConfig[];
  readonly rateLimits: readonly RateLimitConfig[];
  readonly budgets: readonly BudgetConfig[];
  readonly tests: readonly PolicyTestConfig[];
  readonly contexts: readonly ContextConfig[];
  /** The `agents:` registry; empty when none is configured. Code-built configs may omit it. */
  readonly agents?: readonly AgentRegistration[];
}
