/** Who is calling: the verified claims of an agent token, normalised. */
export interface AgentIdentity {
  readonly agent: string;
  readonly tenant: string | undefined;
  readonly team: string | undefined;
  readonly roles: readonly string[];
  readonly environment: string | undefined;
  /** The user the agent acts for (RFC 8693 `act` delegation, or a `user` claim). */
  readonly user: string | undefined;
  /** The delegating user's roles (from the token), used to intersect permissions. */
  readonly userRoles: readonly string[];
  readonly issuer: string;
  readonly tokenId: string | undefined;
  /** The session the token belongs to: its `sid` claim, else its `jti` (one token, one session). */
  readonly session?: string;
  readonly expiresAt: number;
  /** RFC 8693 `act`: the actors' subjects, the one acting now first, then each earlier actor (nested `act`). */
  readonly actors?: readonly string[];
  /** The token's groups claim (admin tokens: approver groups); absent when the token has none. */
  readonly groups?: readonly string[];
}

/** What the request is, computed once; policy sees exactly what is forwarded. */
export interface RequestFacts {
  readonly upstream: string;
  readonly method: string;
  /** Decoded, dot-segment-free path below the upstream, starting with `/`. */
  readonly path: string;
  /** The same path, encoded exactly as it is forwarded. */
  readonly forwardPath: string;
  /** The query string as forwarded (without the leading `?`, agent credentials removed). */
  readonly rawQuery: string;
  readonly query: Readonly<Record<string, readonly string[]>>;
  /** The tool this route maps to, if any. */
  readonly tool: string | undefined;
  /** Path parameters + query + parsed body, as conditions see them. */
  readonly args: Readonly<Record<string, unknown>>;
  /** Why the arguments could not be read (ambiguous, malformed, unsupported); conditions on them deny. */
  readonly argsError: string | undefined;
}

export type Effect = 'allow' | 'deny' | 'escalate';

/** Human approval a rule asks for (the approval workflow acts on it). */
export interface ApprovalRequest {
  readonly group: string;
  readonly timeoutMs: number;
  readonly mode: 'hold' | 'async';
  /** Argument paths approvers do not see and the approval record does not keep. */
  readonly redact?: readonly string[];
}

/** The outcome of policy evaluation for one request. */
export interface Decision {
  readonly effect: Effect;
  /** Ids of the rules that produced the effect; `default-deny` when none matched. */
  readonly rules: readonly string[];
  readonly reason: string;
  /** Present when the effect is `escalate`. */
  readonly approval?: ApprovalRequest;
}

/** A rate limit or budget that refused a request the rules allowed. */
export interface Limited {
  readonly kind: 'rate_limit' | 'budget';
  readonly id: string;
  readonly reason: string;
  /** When the charge will fit; null: never (it is larger than the whole limit), so waiting cannot help. */
  readonly retryAfterMs: number | null;
  /** A usage budget (LLM tokens or cost): its counter, as full as the refusal makes it (for alerts). */
  readonly level?: BudgetLevel;
}

/** How full a usage budget's counter is (tokens, or the currency), for alerts and views. */
export interface BudgetLevel {
  readonly id: string;
  readonly usage: 'tokens' | 'cost';
  /** The counter's key: the budget, its key kind and the tenant's, team's... ids, as JSON. */
  readonly key: string;
  readonly windowMs: number;
  readonly used: number;
  readonly limit: number;
}

/** What an LLM call spends (or may spend, when reserved): tokens of every kind, and their cost in the price table's currency. */
export interface Spend {
  readonly tokens: number;
  readonly cost: number;
}

/** One audit record; never contains a token or a secret. */
export interface AuditRecord {
  ts: number;
  requestId: string;
  agent: string | null;
  tenant: string | null;
  user: string | null;
  upstream: string | null;
  tool: string | null;
  method: string;
  path: string;
  decision: Effect | null;
  rule: string | null;
  reason: string | null;
  status: number;
  upstreamStatus: number | null;
  errorCode: string | null;
  durationMs: number;
  bytesIn: number;
  bytesOut: number;
  policyVersion: string | null;
  /** The approval an escalated request was parked under or executed with. */
  approvalId: string | null;
  /** Who approved or denied it (the admin token's subject), when and why. */
  approver: string | null;
  approvalReason: string | null;
  approvalAt: number | null;
  /** The arguments the tool's `audit_args` keep, as JSON (null: none kept). Bodies are never stored. */
  args: string | null;
  /** The upstream's own id for the response (its `x-request-id`, `request-id`...), beside Valet's `requestId`. */
  upstreamRequestId: string | null;
  /**
   * The delegation chain (RFC 8693 `act`), as JSON: `{"token": [...]}` the agent token's actors,
   * the one acting now first, then those it acts for; `exchanged` the same from a token a token
   * exchange issued for this call. Null when there is none.
   */
  act: string | null;
  /** An MCP message: `{"method", "id", "session"}` as JSON (the session id is the server's, never a credential). */
  rpc: string | null;
  /** The agent's team. */
  team: string | null;
  /** An LLM call: the model, its tokens in all and their cost in the price table's currency (null for other calls). */
  model: string | null;
  tokens: number | null;
  cost: number | null;
  /**
   * An LLM call's usage as JSON: `{input, cached, cache_write, output, reasoning}` tokens, `reserved`
   * (tokens, cost), `source` (`reported` or `estimated`), `priced` (`table`, `ceiling`), `complete`.
   */
  usage: string | null;
  /** What the rules in shadow mode would have decided, as JSON `{effect, rules, reason}`; never enforced. */
  shadow: string | null;
  /**
   * What the decision was made on (the evaluation input and the rules' decision), sealed under a key
   * derived from the master key: as stored, a reference to this row's line of the batch its commit
   * sealed (gateway/audit/facts.ts); null when no decision was made or no master key is in use.
   * Read only by `valet policy replay`.
   */
  facts: string | null;
  /**
   * The same before it is sealed: the facts as encoded (gateway/policy/facts.ts), which the audit
   * writer seals with the rest of its commit's, off the request thread. Never stored as it is: no
   * column reads it.
   */
  factsPlain: string | null;
  /** What response rules did to the answer: `{action: block | escalate | redact, rules, reason, redacted?}` as JSON. */
  response: string | null;
}

/** RFC 8693 §4.1: the current actor, then each prior one (nested `act`), at most 8 deep; stops at the first malformed level. */
export function actorChain(act: unknown): string[] {
  const chain: string[] = [];
  let a = act;
  while (chain.length < 8 && typeof a === 'object' && a !== null && typeof (a as { sub?: unknown }).sub === 'string') {
    chain.push(((a as { sub: string }).sub).slice(0, 256));
    a = (a as { act?: unknown }).act;
  }
  return chain;
}
