import type { Config, MatchConfig, RuleConfig } from '../config/types.js';

/**
 * Where scoped rules may grant: the upstreams some organisation-level allow rule names (by
 * `upstream:` or one of its `tools:`), or `'all'` when one names neither and so allows on every
 * upstream. Organisation-level means from a file outside `agents/`, `teams/` and `tenants/`, with
 * no `scope:`: the organisation itself has opened the upstream to agents.
 */
export type OpenedUpstreams = ReadonlySet<string> | 'all';

/**
 * The upstream of a tool: a declared tool's, else the name before the first dot (an MCP server's
 * tool, `<upstream>.<tool name>`, which the loader accepts only for an MCP upstream).
 */
export function upstreamOfTool(tool: string, toolUpstream: ReadonlyMap<string, string>): string {
  return toolUpstream.get(tool) ?? tool.slice(0, tool.indexOf('.'));
}

/** The upstreams a rule or limit names (by `upstream:` or its tools); empty means every upstream. */
export function namedUpstreams(m: MatchConfig, toolUpstream: ReadonlyMap<string, string>): Set<string> {
  const upstreams = new Set<string>();
  if (m.upstream !== undefined) upstreams.add(m.upstream);
  else for (const t of m.tools ?? []) upstreams.add(upstreamOfTool(t, toolUpstream));
  return upstreams;
}

/** See {@link OpenedUpstreams}. */
export function openedUpstreams(config: Pick<Config, 'rules' | 'tools'>): OpenedUpstreams {
  const toolUpstream = new Map(config.tools.map((t) => [t.name, t.upstream]));
  const opened = new Set<string>();
  for (const r of config.rules) {
    if (r.effect !== 'allow' || r.fileScope !== undefined || r.scope !== undefined) continue;
    const named = namedUpstreams(r, toolUpstream);
    if (named.size === 0) return 'all';
    for (const u of named) opened.add(u);
  }
  return opened;
}

/**
 * Whether a rule can let a request through only where the organisation has opened the upstream:
 * allows and escalations (an approved escalation is forwarded) from a file whose place scopes it.
 */
export function grantsFromScopedFile(r: RuleConfig): boolean {
  return r.effect !== 'deny' && r.fileScope !== undefined;
}

/**
 * The upstreams where a rule takes effect: those it names, less (for a rule from a scoped file
 * that grants) the upstreams the organisation never opened. `undefined`: every upstream; an empty
 * set: none, the rule is inert.
 */
export function effectiveUpstreams(r: RuleConfig, opened: OpenedUpstreams, toolUpstream: ReadonlyMap<string, string>): Set<string> | undefined {
  const named = namedUpstreams(r, toolUpstream);
  if (!grantsFromScopedFile(r) || opened === 'all') return named.size === 0 ? undefined : named;
  if (named.size === 0) return new Set(opened);
  return new Set([...named].filter((u) => opened.has(u)));
}

/** A rule's effective scope for people: `organisation`, or its parts and which come from its file's place. */
export function describeScope(m: MatchConfig): string {
  const scope = m.scope;
  if (scope === undefined) return 'organisation';
  const parts = (['tenant', 'team', 'agent'] as const).filter((k) => scope[k] !== undefined);
  const text = parts.map((k) => `${k} ${scope[k] as string}`).join(', ');
  const fromPlace = parts.filter((k) => m.fileScope?.[k] !== undefined);
  return fromPlace.length === 0 ? text : `${text} (${fromPlace.join(', ')} from the file's place)`;
}
