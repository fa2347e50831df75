import type { IncomingMessage, ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { request } from 'undici';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import type { Metrics } from '../admin/metrics.js';
import { APPROVAL_HEADER, approvalStatus, escalate, VALET_PREFIX, type Escalation } from '../approvals/gate.js';
import type { ApprovalService } from '../approvals/service.js';
import { keptArguments } from '../audit/args.js';
import { requestId as newRequestId } from '../audit/ids.js';
import type { AuditWriter } from '../audit/port.js';
import type { TokenVerifier } from '../auth/verify.js';
import { DEFAULT_LISTENER, type Config, type UpstreamConfig } from '../config/types.js';
import { ValetError } from '../errors.js';
import type { EvaluationInput, Policy } from '../policy/compile.js';
import type { Forwarder } from '../proxy/forward.js';
import { upstreamError } from '../proxy/forward.js';
import { readAll } from '../read.js';
import { acceptedCodings, firstValue, forwardableRequestHeaders, injectCredential, REQUEST_ID_HEADER, upstreamRequestId, valetRequestHeaders, type HeaderList } from '../proxy/headers.js';
import { HangUp, relay, sendWhole } from '../proxy/relay.js';
import { requestLineLogger } from '../log.js';
import { agentOrigin } from '../proxy/location.js';
import { agentResponse, type BodyObserver } from '../proxy/response.js';
import { blocked, MAX_REDACTED_BYTES, redactionFailure, redactionObserver } from '../proxy/response-redaction.js';
import { scrubberFor } from '../proxy/scrub.js';
import type { SecretSource } from '../secrets/env.js';
import type { AgentIdentity, ApprovalRequest, AuditRecord, BudgetLevel, Decision, RequestFacts } from '../types.js';
import { ambiguityError, bodyKind, buildArgs, decodeFormPair, parseBody, type ParsedBody } from '../policy/args.js';
import { RequestBody, type BodyLimits } from './body.js';
import { canonicalQuery, canonicalTarget } from './canonical.js';
import { containsToken, redactTokens } from './token-scan.js';
import { sendError, toValetError, type RefusalStyle } from './respond.js';
import { closeAfterResponse, endedWithHeaders, isHttp2 } from './listener.js';
import type { CredentialService } from '../credentials/service.js';
import { metadataUrl, PROTECTED_RESOURCE_PREFIX, protectedResourceMetadata } from '../mcp/resource.js';
import { answerBatch, MAX_BATCH, type SendOne } from '../mcp/batch.js';
import { fetchToolNames, filterToolsBody, filterToolsSse, ListedTools, TOOLS, type Listing, type ListKind } from '../mcp/tools.js';
import { idOf, mcpFacts, parseBody as parseMcpBody, readMessage, type McpFacts, type McpMessage } from '../mcp/jsonrpc.js';
import { providedSecret } from '../config/credential.js';
import type { LlmMetering, LlmPlan } from '../llm/metering.js';
import type { ResponseMeter } from '../llm/meter.js';
import { withStreamUsage } from '../llm/request.js';
import type { BudgetAlerts } from '../llm/alerts.js';
import type { Reservation, ResponseAction } from '../policy/compile.js';
import type { FactsRecorder } from '../policy/facts.js';

/** The concrete modules the request path calls, built by the composition root. */
export interface PipelineDeps {
  readonly config: Config;
  readonly verifyToken: TokenVerifier;
  /** The policy in force; hot reload swaps what this returns. */
  readonly policy: () => Policy;
  readonly secrets: SecretSource;
  /** Credentials a provider obtains (token endpoints, users' connected accounts). */
  readonly credentials: CredentialService;
  readonly forwarder: Forwarder;
  readonly audit: AuditWriter;
  readonly logger: Logger;
  readonly metrics: Metrics;
  /** Parks escalated requests until a person decides (step 5). */
  readonly approvals: ApprovalService;
  /** True once shutdown began: new requests are refused (and audited). */
  readonly draining: () => boolean;
  /** LLM calls: which are metered, their price and reservation, their response's usage. */
  readonly metering: LlmMetering;
  /** Announces usage budgets passing 80 % and 100 %. */
  readonly budgetAlerts?: BudgetAlerts;
  /** Seals what each decision was made on into its audit row, for `valet policy replay`; absent without a master key. */
  readonly facts?: FactsRecorder;
}

/** `routed`: the upstream whose own listener the request arrived on (it is served at its root). */
export type RequestHandler = (req: IncomingMessage, res: ServerResponse, routed?: string) => Promise<void>;

/** `Authorization: Bearer <token>` in any letter case, or `token <token>` (GitHub's older style). */
const BEARER = /^(?:Bearer|token)[ \t]+([^\s]+)[ \t]*$/i;
const BASIC = /^Basic[ \t]+([A-Za-z0-9+/=_-]+)[ \t]*$/i;
/** A bare JWT as the whole Authorization value (Linear's SDK sends its API key so). */
const BARE_JWT = /^[ \t]*([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)[ \t]*$/;

/** The user name and password of `Authorization: Basic`, or undefined when it is not one. */
function basicParts(value: string): [string, string] | undefined {
  const m = BASIC.exec(value);
  if (!m) return undefined;
  const decoded = Buffer.from(m[1] as string, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  return colon === -1 ? [decoded, ''] : [decoded.slice(0, colon), decoded.slice(colon + 1)];
}
/** Headers that must appear at most once: framing, and what says how to read the body. */
/** How often a call allowed on a shared history is decided again because other calls were recorded meanwhile. */
const HISTORY_ATTEMPTS = 50;

const SINGLE = new Set(['host', 'content-length', 'transfer-encoding', 'content-type', 'content-encoding']);

/**
 * The data plane, top to bottom: receive → authenticate → describe → decide → inject → forward →
 * record. Every outcome, including every failure, is audited exactly once.
 */
export function createPipeline(deps: PipelineDeps): RequestHandler {
  const { config, verifyToken, policy: currentPolicy, secrets, credentials, forwarder, audit, logger, metrics, approvals, draining, metering, budgetAlerts } = deps;
  const requestLog = requestLineLogger(logger);
  // Per upstream, once: the query parameters that may carry the agent token or the credential.
  const credentialParams = new Map([...config.upstreams.values()].map((u) => [u.name, credentialQueryParams(u)]));
  // Once: where any upstream takes agent tokens, to keep them out of the record of a request refused early.
  const tokenPlaces = {
    headers: new Set([...config.upstreams.values()].map((u) => u.agentTokenHeader)),
    query: new Set([...config.upstreams.values()].flatMap((u) => (u.agentTokenQuery === undefined ? [] : [u.agentTokenQuery.toLowerCase()]))),
  };
  const listener = config.gateway.listener ?? DEFAULT_LISTENER;
  const bodyLimits: BodyLimits = { maxBytes: listener.maxStreamBodyBytes, idleMs: listener.bodyIdleTimeoutMs, totalMs: listener.bodyTimeoutMs };
  // Per upstream, once: how Valet's own refusals are written for its SDK.
  const genericRefusal: RefusalStyle = { dialect: 'generic', maxRetryAfterS: config.gateway.maxRetryAfterS };
  const styles = new Map([...config.upstreams.values()].map((u): [string, RefusalStyle] => [u.name, { dialect: u.dialect, maxRetryAfterS: config.gateway.maxRetryAfterS }]));
  // Approvals are bound to the identity the policy saw, so their status is read with the same one.
  const verifyIdentity = async (token: string): Promise<AgentIdentity> => currentPolicy().resolveIdentity(await verifyToken(token));

  // The tools each MCP server listed, per session: a call for a name never listed is refused.
  const listedTools = new ListedTools();
  // The ids of MCP requests in flight, per upstream and session: JSON-RPC ids must be unique among them.
  const pendingIds = new Set<string>();
  // Once: the `Host` names that route to an upstream at its root on the main listener.
  const hostRoutes = new Map([...config.upstreams.values()].flatMap((u) => u.hosts.map((h): [string, string] => [h, u.name])));
  const sessionHeader = config.gateway.policy?.sessions?.header;
  return async function handleRequest(req, res, routed) {
    const started = performance.now();
    const requestId = newRequestId();
    // Valet's id in a header of its own on every response: the upstream's request id header passes
    // through untouched (SDKs report it in support tickets); Valet's own answers also carry it as
    // x-request-id (see respond.ts).
    res.setHeader(REQUEST_ID_HEADER, requestId);
    const url = req.url ?? '';
    const query = url.indexOf('?');
    const rawPath = query === -1 ? url : url.slice(0, query);
    // The raw path until the canonical one is known; cut to 2,048 characters only once redacted (below).
    const rec = newAuditRecord(requestId, req.method ?? 'GET', rawPath);
    /** Encodes what the decision was made on (see FactsRecorder), for the writer to seal into `rec.facts`: run in `finally`. */
    let encodeFacts: (() => string | null) | undefined;
    const hangUp = new HangUp(res);
    // An approval taken for this request, given back if the request fails before it is forwarded.
    let approved: Extract<Escalation, { kind: 'approved' }> | undefined;
    let forwarding = false;
    // The agent token, once known: the path recorded and logged must never hold it.
    let token: string | undefined;
    // The body, taken up (under its size limit and deadlines) from the moment the head is accepted.
    let incoming: RequestBody | undefined;
    // Refusals in the generic shape until the upstream, and so its dialect, is known.
    let refusal = genericRefusal;
    // This request's MCP id while it is in flight (see pendingIds).
    let pendingId: string | undefined;
    // A metered LLM call: what it asks for and may spend, what it reserved of usage budgets, its response's meter.
    let llm: LlmPlan | undefined;
    let reservation: { policy: Policy; held: Reservation } | undefined;
    let meter: ResponseMeter | undefined;
    // What response rules did to the answer, and the values they redacted as it streamed (the audit row's `response`).
    let answered: { action: ResponseAction; redacted: number | undefined } | undefined;

    try {
      // 1. receive
      if (draining()) throw new ValetError('VALET_ERR_SHUTTING_DOWN');
      checkFraming(req);
      if (hasBody(req)) {
        // Refused before a byte of it is read.
        if (Number(req.headers['content-length'] ?? 0) > bodyLimits.maxBytes) throw tooLarge(bodyLimits.maxBytes);
        incoming = new RequestBody(req, bodyLimits);
      }
      if (req.url?.startsWith(VALET_PREFIX)) {
        // Valet's own resources on the data plane: an agent reads the status of its approval.
        rec.upstream = '_valet';
        const m = BEARER.exec(req.headers.authorization ?? '');
        const body = await approvalStatus(approvals, rec.path, rec.method, m?.[1], verifyIdentity, rec);
        res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body) });
        res.end(rec.method === 'HEAD' ? undefined : body);
        return;
      }
      if (rawPath.startsWith(PROTECTED_RESOURCE_PREFIX) && (rec.method === 'GET' || rec.method === 'HEAD')) {
        // RFC 9728 metadata of an MCP upstream, for clients that do OAuth discovery: public, like the server's own would be.
        const metadata = protectedResourceMetadata(config, rawPath, agentOrigin(req.headers.host, req.socket.localAddress, req.socket.localPort) ?? '');
        if (metadata === undefined) throw new ValetError('VALET_ERR_UNKNOWN_UPSTREAM');
        const body = JSON.stringify(metadata);
        res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'max-age=300', 'content-length': Buffer.byteLength(body) });
        res.end(rec.method === 'HEAD' ? undefined : body);
        return;
      }
      // The upstream's own listener, else its host name, else the first path segment names it;
      // canonicalisation, policy and audit are the same whichever did.
      const target = canonicalTarget(req.url ?? '', routed ?? (hostRoutes.size === 0 ? undefined : hostRoutes.get(hostName(req.headers.host))));
      rec.path = target.path;
      rec.upstream = target.upstream;
      const upstream = config.upstreams.get(target.upstream);
      if (!upstream) throw new ValetError('VALET_ERR_UNKNOWN_UPSTREAM');
      refusal = styles.get(upstream.name) ?? refusal;
      // An MCP client that must authenticate is pointed at the resource's metadata (RFC 9728 §5.1).
      if (upstream.kind === 'mcp') refusal = { ...refusal, resourceMetadata: metadataUrl(agentOrigin(req.headers.host, req.socket.localAddress, req.socket.localPort) ?? '', `${target.mount}${target.forwardPath}`) };
      const q = canonicalQuery(target.rawQuery, credentialParams.get(upstream.name) as ReadonlySet<string>);

      // 2. authenticate
      token = agentToken(req.rawHeaders, upstream, q.removed);
      // The token in any reading of the target (raw or decoded path, query names and values) would
      // be forwarded, or read by whatever logs URLs: refused before anything is forwarded or stored.
      if (containsToken(rawPath, token) || containsToken(q.rawQuery, token)) {
        throw new ValetError('VALET_ERR_BAD_REQUEST', 'The agent token may not appear in the request path or query string.');
      }
      const presented = token;
      // A token verified before is answered from the cache without a turn of the event loop.
      const verified = verifyToken.cached(token) ?? (await verifyToken(token));
      rec.agent = verified.agent;
      rec.tenant = verified.tenant ?? null;
      rec.user = verified.user ?? null;
      if (verified.actors !== undefined) rec.act = JSON.stringify({ token: verified.actors });
      // The policy in force decides who the agent is (the agent registry) as well as what it may do.
      const policy = currentPolicy();
      rec.policyVersion = policy.version;
      const identity = withSessionHeader(policy.resolveIdentity(verified), req.headers, sessionHeader);
      rec.tenant = identity.tenant ?? null;
      rec.team = identity.team ?? null;
      // The agent's headers as they may go upstream: built once, for the approval digest and for injection.
      let forwardable: HeaderList | undefined;
      const forwardableHeaders = (): HeaderList => (forwardable ??= forwardableRequestHeaders(req.rawHeaders, upstream, presented));

      // 3. describe
      const toolMatch = policy.matchTool(upstream.name, rec.method, target.path);
      const kind = bodyKind(req.headers['content-type'], hasBody(req));
      let buffered: Buffer | undefined;
      let parsed: ParsedBody = { value: undefined, error: undefined, ambiguous: false };
      // An MCP message: its method and parameters, not the HTTP path, say what the call does.
      let mcp: { message: McpMessage; facts: McpFacts; session: string | undefined } | undefined;
      if (upstream.kind === 'mcp' && rec.method === 'POST') {
        if (kind !== 'json' || incoming === undefined) throw new ValetError('VALET_ERR_MCP_INVALID', 'An MCP message is a JSON body (content-type: application/json).');
        buffered = await readBody(req, incoming, config.gateway.maxBodyBytes);
        rec.bytesIn = buffered.length;
        refuseTokenInBody(buffered, presented);
        const body = parseMcpBody(buffered);
        if ('batch' in body) {
          // Decided per element: each message goes through this path again on its own (its own row), answers gathered.
          if (body.batch.length > MAX_BATCH) throw new ValetError('VALET_ERR_MCP_INVALID', `A batch of more than ${MAX_BATCH} messages.`);
          rec.rpc = JSON.stringify({ batch: body.batch.length, session: firstValue(req.headers['mcp-session-id'])?.slice(0, 128) ?? null });
          const answers = await answerBatch(body.batch, sendToSelf(req));
          const text = answers === undefined ? '' : JSON.stringify(answers);
          res.writeHead(answers === undefined ? 202 : 200, { 'content-type': 'application/json', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(text) });
          res.end(text);
          return;
        }
        refusal = { ...refusal, rpcId: idOf(body.single) };
        const message = readMessage(body.single);
        const session = req.headers['mcp-session-id'];
        mcp = { message, facts: mcpFacts(upstream.name, message), session: typeof session === 'string' ? session : undefined };
        rec.rpc = JSON.stringify({ method: message.kind === 'response' ? null : message.method, id: message.kind === 'notification' ? null : message.id, session: mcp.session?.slice(0, 128) ?? null });
        if (message.kind === 'request' && mcp.session !== undefined) {
          // A second request under an id already in flight in a session would make answers ambiguous: refused.
          // Without a session (initialize, a stateless server) ids belong to separate clients, which all start at 0.
          const key = JSON.stringify([upstream.name, mcp.session ?? null, message.id]);
          if (pendingIds.has(key)) throw new ValetError('VALET_ERR_MCP_INVALID', `Request id ${JSON.stringify(message.id).slice(0, 64)} is already in use by a request in flight in this session.`);
          pendingIds.add(key);
          pendingId = key;
        }
      }
      // An LLM call that spends tokens is read whole (up to gateway.llm.max_body_bytes: prompts carry images) to price the most it may spend.
      const llmRoute = mcp === undefined ? metering.route(upstream, rec.method, target.forwardPath) : undefined;
      const bodyLimit = llmRoute === undefined ? config.gateway.maxBodyBytes : Math.max(config.gateway.maxBodyBytes, metering.settings.maxBodyBytes);
      if (mcp === undefined && policy.readsArgs(upstream.name)) {
        const encoding = (req.headers['content-encoding'] ?? 'identity').trim().toLowerCase();
        if (encoding !== 'identity' && kind !== 'none') {
          // Policy would read compressed bytes while the upstream reads what they decode to.
          parsed = { value: undefined, error: `the body is ${encoding}-encoded; arguments cannot be read`, ambiguous: false };
        } else if (incoming !== undefined && (kind === 'json' || kind === 'form')) {
          buffered = await readBody(req, incoming, bodyLimit);
          rec.bytesIn = buffered.length;
          refuseTokenInBody(buffered, presented);
          parsed = parseBody(kind, buffered);
        } else {
          parsed = parseBody(kind, Buffer.alloc(0));
        }
      }
      // A call that cannot be metered is refused once the rules have had their say (a denial names its rule).
      let unmeterable: string | undefined;
      if (llmRoute !== undefined) {
        if (incoming !== undefined && encoded(req)) unmeterable = 'The body of a metered LLM call may not be compressed: its usage could not be estimated.';
        else if (buffered === undefined && incoming !== undefined) {
          buffered = await readBody(req, incoming, bodyLimit);
          rec.bytesIn = buffered.length;
          refuseTokenInBody(buffered, presented);
        }
        let json: unknown;
        if (unmeterable === undefined && buffered !== undefined && buffered.length > 0) {
          // Whatever its content-type says (the AWS SDK sends none): an LLM API reads its body as JSON.
          const read = kind === 'json' && parsed.value !== undefined ? parsed : parseBody('json', buffered);
          if (read.error !== undefined || typeof read.value !== 'object' || read.value === null) unmeterable = 'The body of a metered LLM call must be a JSON object.';
          else json = read.value;
        }
        llm = metering.plan(llmRoute, json);
        rec.model = llm.request.model === '' ? null : llm.request.model.slice(0, 200);
      }
      const args = buildArgs(toolMatch?.params ?? {}, q.query, parsed, kind, toolMatch?.tool.args ?? {});
      // Policy reads arguments here, and another reader could take these bytes differently from it:
      // whatever policy would decide, it would decide about another request than the upstream gets.
      if (args.ambiguous && policy.readsArgs(upstream.name)) refuseAmbiguous(args.error);
      const facts: RequestFacts = {
        upstream: upstream.name,
        method: rec.method,
        // An MCP message is matched by its method (`/tools/call`), its tool and its arguments.
        path: mcp?.facts.path ?? target.path,
        forwardPath: target.forwardPath,
        rawQuery: q.rawQuery,
        query: q.query,
        tool: mcp !== undefined ? mcp.facts.tool : toolMatch?.tool.name,
        args: mcp?.facts.args ?? args.args,
        argsError: mcp !== undefined ? undefined : args.error,
      };
      rec.tool = facts.tool ?? null;
      rec.args =
        mcp !== undefined
          ? keptArguments(facts.args, mcp.facts.tool === undefined ? undefined : upstream.auditArgs?.[mcp.facts.tool.slice(upstream.name.length + 1)], [presented])
          : keptArguments(args.args, toolMatch?.tool.auditArgs, [presented]);

      // 4. decide
      const described = { identity, facts, environment: config.gateway.environment, now: Date.now() };
      // `user.connected(...)` answers from memory: the user's connected accounts are loaded first (cached a few seconds).
      const connections = identity.user === undefined ? undefined : credentials.loadConnections(identity.tenant, identity.user);
      if (connections !== undefined) await connections.catch((err: unknown) => logger.error({ reqId: requestId, err }, 'could not read connected accounts; user.connected() is false'));
      // A shared history store (Redis) is asked alongside the context sources; one in the process is read lazily.
      // So are the agent's session's earlier calls when a sequence rule (requires, blocked_by) may apply.
      const asking = policy.resolveHistory(described);
      const reading = policy.resolveSession(described);
      let input: EvaluationInput;
      const looking = policy.resolveContext(described);
      if (asking === undefined && !(reading instanceof Promise)) {
        const context = looking instanceof Promise ? await looking : looking;
        input = reading === undefined ? { ...described, context } : { ...described, context, session: reading };
      } else {
        const [context, history, session] = await Promise.all([looking, asking, reading]);
        input = { ...described, context, ...(history !== undefined && { history: history.summary, historyVersion: history.version }), ...(session !== undefined && { session }) };
      }
      const evaluate = (): Decision => {
        const evaluating = performance.now();
        const d = policy.evaluate(input);
        metrics.policyEvaluation((performance.now() - evaluating) / 1000);
        return d;
      };
      let decision = evaluate();
      // Allowed on a shared history: the call takes its place in it only if no call was recorded
      // meanwhile on any instance; otherwise it is decided again on the new history. So concurrent
      // calls see each other as calls in one process do (of 20 parallel first calls, one is first).
      let claimed = false;
      for (let attempt = 1; decision.effect === 'allow' && input.historyVersion !== undefined; attempt++) {
        if (await policy.claimCall({ ...input, historyVersion: input.historyVersion })) {
          claimed = true;
          break;
        }
        if (attempt === HISTORY_ATTEMPTS) {
          throw new ValetError('VALET_ERR_COUNTERS_UNAVAILABLE', `Shared call history kept changing while this call was decided (${HISTORY_ATTEMPTS} attempts); nothing was forwarded.`);
        }
        const now = Date.now();
        const history = await policy.resolveHistory({ ...described, now });
        if (history === undefined) break;
        input = { ...input, now, history: history.summary, historyVersion: history.version };
        decision = evaluate();
      }
      // What the rules decided and on what, sealed into the row for `valet policy replay` (before gateway settings override it).
      // Encoded once the call is over (in `finally`), sealed by the audit writer: off the way to the upstream.
      encodeFacts = deps.facts?.capture(requestId, input, decision, mcp !== undefined || policy.readsArgs(upstream.name));
      // A model without a price may run only once a person agrees (gateway.llm.unknown_model: escalate).
      if (decision.effect === 'allow' && llm?.priced === 'ceiling' && metering.settings.unknownModel === 'escalate' && metering.settings.approval !== undefined) {
        decision = { effect: 'escalate', rules: [UNKNOWN_MODEL_RULE], reason: `no price is known for model "${llm.request.model.slice(0, 128)}"`, approval: metering.settings.approval };
      }
      rec.decision = decision.effect;
      rec.rule = decision.rules.join(',');
      rec.reason = decision.reason;
      // Rules in shadow mode: what they would decide is recorded and counted, never enforced.
      if (policy.shadow !== undefined) {
        // The candidate's sequence rules may ask about other calls than those in force.
        const extra = policy.shadow.resolveSession(input);
        const more = extra instanceof Promise ? await extra : extra;
        const shadow = policy.shadow.evaluate(more === undefined ? input : { ...input, session: { now: more.now, set: { ...input.session?.set, ...more.set } } });
        rec.shadow = JSON.stringify({ effect: shadow.effect, rules: shadow.rules, reason: shadow.reason, ...(policy.shadow.version !== policy.version && { version: policy.shadow.version }) });
        if (shadow.effect !== decision.effect) metrics.shadowDisagreement(decision.effect, shadow.effect);
      }
      const rule = decision.rules.join(', ');
      if (decision.effect === 'deny') {
        throw new ValetError('VALET_ERR_POLICY_DENIED', `Denied by rule ${rule}: ${decision.reason}`, {
          extra: { rule, reason: decision.reason },
        });
      }
      if (unmeterable !== undefined) throw new ValetError('VALET_ERR_LLM_UNMETERABLE', unmeterable);
      if (llm?.priced === 'ceiling' && metering.settings.unknownModel === 'deny') {
        throw new ValetError('VALET_ERR_LLM_UNKNOWN_MODEL', `No price is known for model "${llm.request.model.slice(0, 128)}" (gateway.llm.prices), and gateway.llm.unknown_model refuses such calls.`);
      }
      // 5. approve: park the exact request (body buffered) until a person decides; go on only if approved.
      if (decision.effect === 'escalate') {
        if (buffered === undefined && incoming !== undefined) {
          buffered = await readBody(req, incoming, config.gateway.maxBodyBytes);
          rec.bytesIn = buffered.length;
          refuseTokenInBody(buffered, presented);
        }
        const shown = parsed.value === undefined && parsed.error === undefined && buffered !== undefined && !encoded(req) ? parseBody(kind, buffered) : parsed;
        const shownArgs = mcp !== undefined ? { args: mcp.facts.args, error: undefined, ambiguous: false } : shown === parsed ? args : buildArgs(toolMatch?.params ?? {}, q.query, shown, kind, toolMatch?.tool.args ?? {});
        // The approver reads these arguments as policy would: the same ambiguity is refused.
        if (shownArgs.ambiguous) refuseAmbiguous(shownArgs.error);
        const header = req.headers[APPROVAL_HEADER];
        const outcome = await escalate(
          approvals,
          {
            requestId,
            identity,
            facts,
            decision,
            headers: forwardableHeaders(),
            // An MCP call is bound by what it does, not by its JSON-RPC id (a re-sent call has a new one).
            body: mcp !== undefined && mcp.message.kind !== 'response' ? Buffer.from(JSON.stringify([mcp.message.method, mcp.message.params])) : (buffered ?? Buffer.alloc(0)),
            redeemByDigest: mcp !== undefined,
            args: shownArgs.args,
            argsError: shownArgs.error,
            pathParams: toolMatch?.params ?? {},
            token: presented,
            presented: Array.isArray(header) ? header.join(',') : header,
            signal: hangUp,
            policyVersion: policy.version,
          },
          rec,
        );
        if (outcome.kind === 'accepted' && mcp?.message.kind === 'request') {
          // The model is told, as the call's result, that a person must approve it first; the same call made again once approved runs.
          const approval = (JSON.parse(outcome.body) as { approval: { id: string; group: string; reason: string; expires_at: string } }).approval;
          const text = `This call was not run: it needs approval by ${approval.group} (${approval.reason}). Approval ${approval.id} is pending until ${approval.expires_at}; once it is approved, make exactly the same call again.`;
          const body = JSON.stringify({ jsonrpc: '2.0', id: mcp.message.id, result: { content: [{ type: 'text', text }], isError: true, _meta: { 'valet/approval': approval } } });
          res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body), 'x-request-id': requestId });
          res.end(body);
          return;
        }
        if (outcome.kind === 'accepted') {
          res.writeHead(202, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', location: outcome.location, 'content-length': Buffer.byteLength(outcome.body), 'x-request-id': requestId });
          res.end(outcome.body);
          return;
        }
        approved = outcome;
      }
      // Only a shared counter store answers with a Promise: the embedded path takes no extra turn.
      // A metered LLM call reserves the most it may spend against its usage budgets, settled once it is over.
      const charging = policy.charge(input, llm !== undefined && policy.meters(upstream.name) ? llm.reserve : undefined);
      const charged = charging instanceof Promise ? await charging : charging;
      const limited = charged !== undefined && 'kind' in charged && charged.kind === 'reserved' ? undefined : (charged as Exclude<typeof charged, Reservation>);
      if (limited === undefined && charged !== undefined) {
        reservation = { policy, held: charged as Reservation };
        budgetAlerts?.observe(reservation.held.levels);
      }
      if (limited !== undefined) {
        rec.decision = 'deny';
        rec.rule = 'id' in limited ? limited.id : limited.rules.join(',');
        rec.reason = limited.reason;
        if ('effect' in limited) {
          throw new ValetError('VALET_ERR_POLICY_DENIED', `Denied by ${rec.rule}: ${limited.reason}`, {
            extra: { rule: rec.rule, reason: limited.reason },
          });
        }
        if (limited.level !== undefined) budgetAlerts?.refused(limited.level);
        if (limited.retryAfterMs === null) {
          // Waiting cannot help: the call may spend more than the whole budget, or cannot say how much.
          const unbounded = llm !== undefined && !Number.isFinite(limited.level?.usage === 'tokens' ? llm.reserve.tokens : llm.reserve.cost);
          throw new ValetError(unbounded ? 'VALET_ERR_LLM_UNMETERABLE' : 'VALET_ERR_BUDGET_TOO_SMALL', `Refused: ${limited.reason}.`, { extra: { rule: limited.id, reason: limited.reason } });
        }
        const retryAfter = Math.max(1, Math.ceil(limited.retryAfterMs / 1000));
        throw new ValetError(limited.kind === 'budget' ? 'VALET_ERR_BUDGET_EXCEEDED' : 'VALET_ERR_RATE_LIMITED', `Refused: ${limited.reason}.`, {
          extra: { rule: limited.id, reason: limited.reason, retry_after_s: retryAfter },
        });
      }

      // 6. inject: 503 unless every secret the credential names is available (a provider's token
      // first obtained from its token endpoint, or held from before).
      const caller = { tenant: identity.tenant, user: identity.user, agentToken: token };
      const providing = credentials.token(upstream.name, caller);
      const obtained = providing === undefined ? undefined : await providing;
      const provided = obtained?.token;
      if (obtained?.act !== undefined) rec.act = JSON.stringify({ ...(identity.actors !== undefined && { token: identity.actors }), exchanged: obtained.act });
      const injected = injectCredential(
        forwardableHeaders(),
        facts.rawQuery,
        upstream.credential,
        (name) => (provided !== undefined && name === providedSecret(upstream.name) ? provided : secrets.get(name, identity.tenant)),
      );
      // Response rules that may act on the answer: it is then read decoded, as scrubbing reads it.
      const responsePlan = policy.responsePlan(input);
      const answering = responsePlan !== undefined && upstream.scrubResponses === false ? { ...upstream, scrubResponses: true } : upstream;
      // The codings Valet may ask for and send back: parsed once, for the request and the response.
      const accepted = answering.scrubResponses === false ? [] : acceptedCodings(req.headers['accept-encoding']);
      injected.headers.push(...valetRequestHeaders(answering, requestId, accepted));
      const recording = claimed ? undefined : policy.recordCall(input);
      // The session learns of the call before it is forwarded: a call it rules out can never overtake it.
      const marking = policy.recordSequence(input, 'called');
      // The decision's audit row is durable before anything is forwarded (one fsync shared with the
      // requests that arrived alongside). If it cannot be written: 503, nothing forwarded (unless
      // gateway.audit.fail_open). The call stays counted in the policy's history, which errs on the
      // safe side. The outcome completes the row in `finally`, without waiting. The body is only
      // taken up after the wait, right before forwarding, so an agent hanging up meanwhile meets
      // no half-built stream.
      const waiting = performance.now();
      // A shared history store records alongside the audit commit; if it cannot, nothing is forwarded.
      await (recording instanceof Promise || marking instanceof Promise ? Promise.all([audit.commit(rec), recording, marking]) : audit.commit(rec));
      metrics.auditWait((performance.now() - waiting) / 1000);
      // A body that broke its limits while the request was being decided is not forwarded at all.
      if (incoming?.failure !== undefined) throw incoming.failure;
      // A service that signs payload hashes gets a streamed body read whole first (max_body_bytes, else 413).
      if (credentials.hashesPayload(upstream.name) && buffered === undefined && incoming !== undefined) buffered = await readBody(req, incoming, config.gateway.maxBodyBytes);
      // A streamed chat call asks for its usage (the extra chunk is taken out again on the way back).
      if (llm?.request.addUsage === true && buffered !== undefined) buffered = withStreamUsage(buffered);
      // A body that has arrived whole by now goes as one buffer (RequestBody.whole); a longer one streams.
      const whole = buffered ?? incoming?.whole();
      const body = whole ?? incoming ?? null;
      const length = whole ? String(whole.length) : req.headers['content-length'];
      if (length !== undefined) injected.headers.push(['content-length', length]);
      const forwardTarget = injected.rawQuery === '' ? facts.forwardPath : `${facts.forwardPath}?${injected.rawQuery}`;
      // An AWS upstream's request is signed last, over exactly what is forwarded, with the tenant's keys (or its role's).
      const signing = credentials.sign(upstream.name, { method: facts.method, path: forwardTarget, headers: injected.headers, body: buffered ?? (incoming === undefined ? null : 'stream') }, caller);
      const sent = signing === undefined ? { path: forwardTarget, headers: injected.headers, secrets: injected.secrets } : await signing;

      // An MCP tool the server never listed by that exact name is not called (a lenient server could
      // take `Delete_Repo` for `delete_repo`): the list is asked for once, in the agent's session.
      if (mcp?.facts.tool !== undefined) {
        const name = mcp.facts.tool.slice(upstream.name.length + 1);
        if (!listedTools.has(upstream.name, mcp.session, name)) {
          const headers = sent.headers.filter(([n]) => n !== 'content-length');
          const names = await fetchToolNames(async (text) => {
            const r = await forwarder.forward(upstream, { method: 'POST', path: sent.path, headers: [...headers, ['content-length', String(Buffer.byteLength(text))]], body: Buffer.from(text), signal: hangUp });
            const chunks: Buffer[] = [];
            let size = 0;
            for await (const c of r.body as AsyncIterable<Buffer>) if ((size += c.length) <= 4 << 20) chunks.push(c);
            return { status: r.statusCode, contentType: firstValue(r.headers['content-type']), text: Buffer.concat(chunks).toString('utf8') };
          }).catch((err: unknown) => {
            throw upstreamError(err);
          });
          listedTools.record(upstream.name, mcp.session, names);
          if (!names.includes(name)) throw new ValetError('VALET_ERR_MCP_UNKNOWN_TOOL', `Tool "${name.slice(0, 128)}" is not one the MCP server lists (names are exact); nothing was forwarded.`);
        }
      }

      // 7. forward
      forwarding = true;
      let upstreamRes = await forwarder.forward(upstream, {
        method: facts.method,
        path: sent.path,
        headers: sent.headers,
        body,
        signal: hangUp,
      });
      rec.upstreamStatus = upstreamRes.statusCode;
      // A call that succeeded satisfies later calls that require it, from before the agent sees its answer.
      if (upstreamRes.statusCode >= 200 && upstreamRes.statusCode < 300) {
        const succeeded = policy.recordSequence(input, 'ok');
        if (succeeded instanceof Promise) await succeeded.catch((err: unknown) => logger.error({ reqId: requestId, err }, 'could not record a successful call in its session; calls that require it will be refused'));
      }
      // Response rules: the answer is withheld, held until a person releases it, or redacted on its way.
      const action = responsePlan?.at(upstreamRes.statusCode);
      if (action !== undefined) {
        answered = { action, redacted: undefined };
        if (action.kind === 'block') {
          upstreamRes.body.on('error', () => undefined);
          upstreamRes.body.destroy();
          throw blocked(action.reason, action.rules.join(', '));
        }
        if (action.kind === 'escalate') {
          const held = await holdAnswer(upstreamRes.body, MAX_REDACTED_BYTES);
          const contentType = firstValue(upstreamRes.headers['content-type']) ?? 'no content type';
          const release = await escalate(
            approvals,
            {
              requestId,
              identity,
              facts,
              decision: { effect: 'escalate', rules: action.rules, reason: `${action.reason} (the answer, ${upstreamRes.statusCode} ${contentType.slice(0, 64)}, ${held.length} bytes, is held until released)`, approval: action.approval as ApprovalRequest },
              headers: forwardableHeaders(),
              body: buffered ?? Buffer.alloc(0),
              args: facts.args,
              argsError: facts.argsError,
              pathParams: toolMatch?.params ?? {},
              token: presented,
              presented: undefined,
              signal: hangUp,
              policyVersion: policy.version,
            },
            rec,
          ).catch((err: unknown) => {
            const e = toValetError(err);
            if (e.code === 'VALET_ERR_CLIENT_CLOSED' || e.code === 'VALET_ERR_SHUTTING_DOWN') throw e;
            throw blocked(`an approver did not release it (${e.code})`, action.rules.join(', '));
          });
          if (release.kind !== 'approved') throw blocked('it was not released', action.rules.join(', '));
          upstreamRes = { ...upstreamRes, body: Readable.from([held]) };
        }
      }
      // A stdio MCP server holds its secrets in its environment: any copy of them it sends back is scrubbed too.
      const scrubber = scrubberFor(upstream.stdio === undefined ? sent.secrets : [...sent.secrets, ...Object.values(upstream.stdio.env).flatMap((n) => secrets.get(n, undefined) ?? [])]);
      // Recorded scrubbed whatever scrub_responses says: an upstream may echo the credential anywhere.
      const upstreamId = upstreamRequestId(upstreamRes.headers);
      rec.upstreamRequestId = upstreamId === null ? null : scrubber.redact(upstreamId);
      // Valet's origin as the agent reached it, worked out only if a response header links to the upstream.
      const origin = (): string | undefined => agentOrigin(req.headers.host, req.socket.localAddress, req.socket.localPort);
      if (llm !== undefined) meter = metering.meter(llm, { status: upstreamRes.statusCode, contentType: firstValue(upstreamRes.headers['content-type']), headers: upstreamRes.headers });
      const observers: BodyObserver[] = meter === undefined ? [] : [meter];
      if (action?.redactor !== undefined && answered !== undefined && facts.method !== 'HEAD') {
        const counting = answered;
        counting.redacted = 0;
        observers.push(redactionObserver(action.redactor, action.keep, firstValue(upstreamRes.headers['content-type']), (n) => (counting.redacted = (counting.redacted ?? 0) + n)));
      }
      const toAgent = agentResponse(answering, facts.method, upstreamRes, scrubber, origin, target.mount, accepted, observers);
      // A stream cut at its reservation (gateway.llm.overrun: cut) has ended for the agent; the upstream's generation is stopped too.
      meter?.onCut(() =>
        setImmediate(() => {
          toAgent.body?.on('error', () => undefined);
          upstreamRes.body.on('error', () => undefined);
          upstreamRes.body.destroy();
        }),
      );
      // An MCP tools/list (resources/list, prompts/list) answer shows only what this agent may use (filtered as it streams).
      const list = mcp?.message.kind === 'request' ? LISTS[mcp.message.method] : undefined;
      const listing = list === undefined ? undefined : entryListing(policy, input, upstream.name, list);
      const listId = mcp?.message.kind === 'request' ? mcp.message.id : undefined;
      const session = mcp?.session ?? firstValue(upstreamRes.headers['mcp-session-id']);
      if (listing !== undefined && toAgent.headers['content-encoding'] !== undefined) throw new ValetError('VALET_ERR_UPSTREAM_ENCODING', 'The MCP server\'s tools/list answer is compressed and cannot be filtered; nothing was forwarded.');
      if (toAgent.whole !== undefined) {
        // A small body: read whole and scrubbed before anything is sent, then one write.
        let whole: { body: Buffer; upstreamBytes: number };
        try {
          whole = await toAgent.whole();
        } catch (err) {
          throw redactionFailure(err) ?? upstreamError(err);
        }
        rec.bytesOut = whole.upstreamBytes;
        if (listing !== undefined && listId !== undefined) {
          const filtered = filterToolsBody(whole.body.toString('utf8'), firstValue(upstreamRes.headers['content-type']), listId, listing, list);
          if (list?.field === 'tools') listedTools.record(upstream.name, session, filtered.listed);
          whole = { ...whole, body: Buffer.from(filtered.text) };
          toAgent.headers['content-length'] = String(whole.body.length);
        }
        res.writeHead(upstreamRes.statusCode, toAgent.headers);
        await sendWhole(whole.body, res);
        return;
      }
      res.writeHead(upstreamRes.statusCode, toAgent.headers);
      // A streamed response (no length: SSE, chunked) shows its headers at once; others go with the body.
      if (upstreamRes.headers['content-length'] === undefined) res.flushHeaders();
      upstreamRes.body.on('data', (chunk: Buffer) => {
        rec.bytesOut += chunk.length;
      });
      try {
        await relay(listing === undefined || listId === undefined ? toAgent.body : toAgent.body.pipe(filterToolsSse(listId, listing, (names) => list?.field === 'tools' && listedTools.record(upstream.name, session, names), list)), res);
      } catch (err) {
        throw redactionFailure(err) ?? upstreamError(err);
      }
    } catch (err) {
      // Once the agent has gone, a failure is its hang-up, unless the upstream had already timed out.
      // A body over its limit or deadline fails whichever reader had it (undici's upload reports it as an upstream error).
      let e = incoming?.failure ?? toValetError(err);
      if (approved !== undefined && !forwarding) {
        await approved.release(`refused after approval (${e.code})`).catch((err: unknown) => logger.error({ reqId: requestId, err }, 'could not give back the approval of a refused request'));
      }
      if (hangUp.aborted && e.code !== 'VALET_ERR_UPSTREAM_TIMEOUT') e = new ValetError('VALET_ERR_CLIENT_CLOSED');
      rec.errorCode = e.code;
      if (e.code === 'VALET_ERR_INTERNAL') logger.error({ reqId: requestId, err: e.cause }, 'internal error');
      if (e.code !== 'VALET_ERR_CLIENT_CLOSED') sendError(res, e, requestId, refusal);
    } finally {
      if (pendingId !== undefined) pendingIds.delete(pendingId);
      const redacted = redactTokens(rec.path, token !== undefined ? [token] : presentedTokens(req, tokenPlaces));
      rec.path = rec.path === rawPath ? redacted.slice(0, 2048) : redacted;
      if (incoming !== undefined) {
        rec.bytesIn = incoming.bytes;
        // Whatever of the body nobody read is dropped, still under its limits; past one, the connection (HTTP/2: the stream) goes.
        incoming.discard(() => closeAfterResponse(req));
      }
      rec.status = rec.errorCode === 'VALET_ERR_CLIENT_CLOSED' && !res.headersSent ? 499 : res.statusCode;
      if (answered !== undefined) {
        const { action, redacted } = answered;
        rec.response = JSON.stringify({ action: action.kind, rules: action.rules, reason: action.reason, ...(redacted !== undefined && { redacted }) });
      }
      if (llm !== undefined) {
        // Whatever metering finds, the request's row is written.
        try {
          meterOutcome(llm, meter, rec, reservation);
        } catch (err) {
          logger.error({ reqId: requestId, err }, 'could not meter an LLM call; its usage is not recorded');
        }
      }
      rec.durationMs = Math.round((performance.now() - started) * 1000) / 1000;
      if (encodeFacts !== undefined) rec.factsPlain = encodeFacts();
      audit.record(rec);
      metrics.request(rec);
      requestLog.info(
        {
          reqId: requestId,
          agent: rec.agent,
          tenant: rec.tenant,
          upstream: rec.upstream,
          method: rec.method,
          path: rec.path,
          decision: rec.decision,
          rule: rec.rule,
          status: rec.status,
          upstreamStatus: rec.upstreamStatus,
          errorCode: rec.errorCode,
          ms: rec.durationMs,
          bytesIn: rec.bytesIn,
          bytesOut: rec.bytesOut,
        },
        'request',
      );
    }
  };

  /**
   * What a metered LLM call spent, in its audit row and the metrics; its reservation settled to it
   * (given back in full when nothing was forwarded), and alerts for the levels that leaves.
   */
  function meterOutcome(plan: LlmPlan, responseMeter: ResponseMeter | undefined, rec: AuditRecord, held: { policy: Policy; held: Reservation } | undefined): void {
    const spent = metering.spent(plan, responseMeter?.result(), responseMeter === undefined ? null : rec.upstreamStatus);
    rec.model = spent.model === '' ? null : spent.model.slice(0, 200);
    rec.tokens = spent.spend.tokens;
    rec.cost = Math.round(spent.spend.cost * 1e9) / 1e9;
    const u = spent.usage;
    const tokens = { input: u.input, cached: u.cached, cache_write: u.cacheWrite, output: u.output, reasoning: u.reasoning };
    const finite = (n: number): number | null => (Number.isFinite(n) ? Math.round(n * 1e9) / 1e9 : null);
    rec.usage = JSON.stringify({ ...tokens, source: spent.source, complete: spent.complete, priced: plan.priced, reserved: held === undefined ? null : { tokens: finite(plan.reserve.tokens), cost: finite(plan.reserve.cost) } });
    if (rec.upstream !== null) metrics.llm(rec.upstream, spent.priceName, rec.tenant, tokens, spent.spend.cost);
    if (held === undefined) return;
    const settling = held.policy.settle(held.held, spent.spend, Date.now());
    const alert = (levels: readonly BudgetLevel[]): void => budgetAlerts?.observe(levels);
    if (settling instanceof Promise) settling.then(alert, (err: unknown) => logger.error({ reqId: rec.requestId, err }, 'could not settle a budget reservation; it stays counted in full'));
    else alert(settling);
  }
}

/** The rule a call for a model without a price is escalated by (gateway.llm.unknown_model: escalate). */
export const UNKNOWN_MODEL_RULE = 'gateway.llm.unknown_model';

/** A `Host` value as a name to route by: lower case, without its port or a trailing dot ('' when absent). */
export function hostName(host: string | undefined): string {
  if (host === undefined) return '';
  const bracket = host.startsWith('[') ? host.indexOf(']') : -1;
  const colon = host.indexOf(':', bracket + 1);
  const name = (colon === -1 ? host : host.slice(0, colon)).toLowerCase();
  return name.endsWith('.') ? name.slice(0, -1) : name;
}

/** A session id the agent names itself: short, printable, unambiguous. */
const SESSION_ID = /^[A-Za-z0-9._:@-]{1,128}$/;

/**
 * The identity with its session taken from `header` when the request names one
 * (`gateway.policy.sessions.header`). It stays within the agent's own sessions: every session key
 * holds the tenant and the agent, so no agent can name another's.
 */
function withSessionHeader(identity: AgentIdentity, headers: IncomingMessage['headers'], header: string | undefined): AgentIdentity {
  if (header === undefined) return identity;
  const value = headers[header];
  if (value === undefined) return identity;
  if (typeof value !== 'string' || !SESSION_ID.test(value)) throw new ValetError('VALET_ERR_BAD_REQUEST', `The ${header} header must be one session id of 1 to 128 letters, digits or ._:@- characters.`);
  return { ...identity, session: `header:${value}` };
}

/** An audit record for a request about which nothing is known yet. */
export function newAuditRecord(requestId: string, method: string, path: string): AuditRecord {
  return {
    ts: Date.now(),
    requestId,
    agent: null,
    tenant: null,
    user: null,
    upstream: null,
    tool: null,
    method,
    path,
    decision: null,
    rule: null,
    reason: null,
    status: 0,
    upstreamStatus: null,
    errorCode: null,
    durationMs: 0,
    bytesIn: 0,
    bytesOut: 0,
    policyVersion: null,
    approvalId: null,
    approver: null,
    approvalReason: null,
    approvalAt: null,
    args: null,
    upstreamRequestId: null,
    act: null,
    rpc: null,
    team: null,
    model: null,
    tokens: null,
    cost: null,
    usage: null,
    shadow: null,
    facts: null,
    factsPlain: null,
    response: null,
  };
}

/** Refuses requests whose framing two parsers could read differently. */
function checkFraming(req: IncomingMessage): void {
  let seen: string[] | undefined;
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = (raw[i] as string).toLowerCase();
    if (!SINGLE.has(name)) continue;
    // Node keeps one copy of some of these and joins others; the upstream might read another.
    if (seen?.includes(name)) throw new ValetError('VALET_ERR_BAD_REQUEST', `Ambiguous request: the ${name} header is repeated.`);
    (seen ??= []).push(name);
  }
  if (seen !== undefined && seen.includes('content-length') && seen.includes('transfer-encoding')) {
    throw new ValetError('VALET_ERR_BAD_REQUEST', 'Ambiguous request framing (both Content-Length and Transfer-Encoding).');
  }
  const te = req.headers['transfer-encoding'];
  if (isHttp2(req)) {
    // RFC 9113 §8.2.2 (Node's HTTP/2 parser already resets such a stream) and §8.3.1.
    if (te !== undefined) throw new ValetError('VALET_ERR_BAD_REQUEST', 'Transfer-Encoding is not allowed in an HTTP/2 request.');
    const authority = req.headers[':authority'];
    if (authority !== undefined && String(req.headers.host).toLowerCase() !== String(authority).toLowerCase()) throw new ValetError('VALET_ERR_BAD_REQUEST', 'Ambiguous request: Host and :authority differ.');
  }
  if (te !== undefined && te.trim().toLowerCase() !== 'chunked') {
    throw new ValetError('VALET_ERR_BAD_REQUEST', 'Only "Transfer-Encoding: chunked" is accepted.');
  }
}

function credentialQueryParams(upstream: UpstreamConfig): ReadonlySet<string> {
  const names = new Set<string>();
  if (upstream.agentTokenQuery !== undefined) names.add(upstream.agentTokenQuery.toLowerCase());
  if (upstream.credential.scheme === 'query') names.add(upstream.credential.param.toLowerCase());
  return names;
}

/**
 * The one agent token presented, from `Authorization: Bearer` (or `token`), the upstream SDK's key
 * header, and (only when configured) `Authorization: Basic` or a query parameter. Two different
 * tokens are refused rather than guessed.
 */
function agentToken(rawHeaders: readonly string[], upstream: UpstreamConfig, removedQuery: Record<string, string[]>): string {
  const found = new Set<string>();
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = (rawHeaders[i] as string).toLowerCase();
    const value = rawHeaders[i + 1] as string;
    if (name === 'authorization') {
      const m = BEARER.exec(value) ?? BARE_JWT.exec(value);
      if (m) found.add(m[1] as string);
      else if (upstream.agentTokenBasic !== undefined) {
        // SDKs that only do Basic (Twilio, Jira): the token is the password, or the user name.
        const parts = basicParts(value);
        const token = parts?.[upstream.agentTokenBasic === 'username' ? 0 : 1];
        if (token !== undefined && token !== '') found.add(token);
      }
    } else if (name === upstream.agentTokenHeader && value.trim() !== '') {
      found.add(value.trim());
    }
  }
  if (upstream.agentTokenQuery !== undefined) {
    for (const v of removedQuery[upstream.agentTokenQuery.toLowerCase()] ?? []) if (v !== '') found.add(v);
  }
  if (found.size === 0) throw new ValetError('VALET_ERR_TOKEN_MISSING');
  if (found.size > 1) throw new ValetError('VALET_ERR_TOKEN_INVALID', 'The agent token is invalid: more than one token was presented.');
  return found.values().next().value as string;
}

/**
 * Everything that may be an agent token, for a request refused before its token was determined:
 * Bearer values, values of any upstream's token header and of any upstream's token query parameter.
 */
function presentedTokens(req: IncomingMessage, places: { headers: ReadonlySet<string>; query: ReadonlySet<string> }): string[] {
  const found: string[] = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = (req.rawHeaders[i] as string).toLowerCase();
    const value = (req.rawHeaders[i + 1] as string).trim();
    if (name === 'authorization') {
      const m = BEARER.exec(value) ?? BARE_JWT.exec(value);
      if (m) found.push(m[1] as string);
      // Basic's parts as tokens only when token-like: a user name such as "v1" must not redact paths.
      else for (const part of basicParts(value) ?? []) if (part.length >= 16) found.push(part);
    } else if (places.headers.has(name) && value !== '') {
      found.push(value);
    }
  }
  if (places.query.size > 0) {
    const q = (req.url ?? '').indexOf('?');
    for (const pair of q === -1 ? [] : (req.url ?? '').slice(q + 1).split('&')) {
      const decoded = decodeFormPair(pair);
      if (decoded !== undefined && places.query.has(decoded[0].toLowerCase()) && decoded[1] !== '') found.push(decoded[1]);
    }
  }
  return found;
}

/** Refuses a buffered body that holds the agent token in any reading (raw, JSON-escaped, percent-encoded). */
function refuseTokenInBody(body: Buffer, token: string): void {
  // A verified token is ASCII, so latin1 keeps its bytes one character each.
  if (containsToken(body.toString('latin1'), token)) {
    throw new ValetError('VALET_ERR_BAD_REQUEST', 'The agent token may not appear in the request body.');
  }
}

function refuseAmbiguous(reason: string | undefined): never {
  throw ambiguityError(reason);
}

/** Whether the body is compressed (or otherwise encoded): its arguments cannot be read then. */
function encoded(req: IncomingMessage): boolean {
  return (req.headers['content-encoding'] ?? 'identity').trim().toLowerCase() !== 'identity';
}

function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  // HTTP/2 frames bodies itself: without a length, one follows unless the HEADERS frame ended the stream.
  if (length === undefined && isHttp2(req)) return !endedWithHeaders(req);
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

function tooLarge(max: number): ValetError {
  return new ValetError('VALET_ERR_BODY_TOO_LARGE', `The request body exceeds ${max} bytes.`);
}

/** An upstream answer held for a person (response rule `escalate`), read whole up to `max` bytes; past it, withheld. */
function holdAnswer(body: Readable, max: number): Promise<Buffer> {
  return readAll(body, { max, tooLarge: () => blocked(`it is larger than ${max} bytes, too large to hold for approval`) });
}

/** Reads a body policy must see, refusing (413) past `max` bytes without reading further. */
async function readBody(req: IncomingMessage, body: RequestBody, max: number): Promise<Buffer> {
  if (Number(req.headers['content-length'] ?? 0) > max) throw tooLarge(max);
  if (body.failure !== undefined) throw body.failure;
  // Most bodies have all arrived by now (a small one comes with its headers).
  const whole = body.whole();
  if (whole === undefined) return readAll(body, { max, tooLarge: () => tooLarge(max) });
  if (whole.length > max) throw tooLarge(max);
  return whole;
}

/** The lists an MCP server answers that are filtered per agent, by the method that asks for them. */
const LISTS: Readonly<Record<string, ListKind>> = { 'tools/list': TOOLS, 'resources/list': { field: 'resources', key: 'uri' }, 'prompts/list': { field: 'prompts', key: 'name' } };

/**
 * How an entry of an MCP list is shown to this agent: hidden when policy denies every use of it,
 * with a note when uses escalate. A resource is judged exactly (reading it has no other argument
 * than its URI); for a tool or a prompt, where a rule for this upstream reads arguments, a denial
 * may depend on them, so it is listed and each use decided on its own.
 */
function entryListing(policy: Policy, input: EvaluationInput, upstream: string, list: ListKind): (name: string) => Listing {
  const argsMatter = list.field !== 'resources' && policy.readsArgs(upstream);
  return (name) => {
    const facts =
      list.field === 'tools'
        ? { path: '/tools/call', tool: `${upstream}.${name}`, args: {} }
        : list.field === 'resources'
          ? { path: '/resources/read', tool: undefined, args: { uri: name } }
          : { path: '/prompts/get', tool: undefined, args: { name, arguments: {} } };
    const d = policy.evaluate({ ...input, facts: { ...input.facts, ...facts, argsError: undefined } });
    if (d.effect === 'escalate') return 'escalates';
    return d.effect === 'deny' && !argsMatter ? 'hidden' : 'listed';
  };
}

/**
 * Sends one message of an MCP batch back through this listener, with the batch's own headers: it
 * is authenticated, decided, approved, forwarded and audited exactly as if the agent had sent it
 * alone.
 */
function sendToSelf(req: IncomingMessage): SendOne {
  const address = req.socket.localAddress ?? '127.0.0.1';
  const host = address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${req.socket.localPort}${req.url ?? '/'}`;
  const headers = Object.fromEntries(
    Object.entries(req.headers).filter(([n, v]) => typeof v === 'string' && !n.startsWith(':') && !['content-length', 'transfer-encoding', 'connection', 'keep-alive', 'expect'].includes(n)),
  ) as Record<string, string>;
  return async (message) => {
    const r = await request(url, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body: message });
    return { status: r.statusCode, contentType: firstValue(r.headers['content-type']), text: await r.body.text() };
  };
}
