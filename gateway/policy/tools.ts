import type { ToolConfig } from '../config/types.js';

/** The tool a request maps to and the path parameters it captured. */
export interface ToolMatch {
  readonly tool: ToolConfig;
  readonly params: Readonly<Record<string, string>>;
}

interface CompiledTool {
  readonly tool: ToolConfig;
  readonly segments: readonly ({ literal: string } | { param: string })[];
}

/**
 * Compiles tool routes (`POST /v1/customers/{id}`) once. A literal segment beats a parameter at
 * the same position, so `/v1/customers/search` is not taken for `{id} = "search"`.
 */
export function compileTools(tools: readonly ToolConfig[]): (upstream: string, method: string, path: string) => ToolMatch | undefined {
  const index = new Map<string, CompiledTool[]>();
  for (const tool of tools) {
    const segments = tool.path
      .split('/')
      .slice(1)
      .filter((s, i, all) => !(s === '' && i === all.length - 1))
      .map((s) => {
        const m = /^\{([A-Za-z_][A-Za-z0-9_]*)\}$/.exec(s);
        return m ? { param: m[1] as string } : { literal: s };
      });
    const key = `${tool.upstream} ${tool.method} ${segments.length}`;
    index.set(key, [...(index.get(key) ?? []), { tool, segments }]);
  }
  for (const list of index.values()) {
    // More literal segments first: the most specific route wins.
    list.sort((a, b) => b.segments.filter((s) => 'literal' in s).length - a.segments.filter((s) => 'literal' in s).length);
  }
  return (upstream, method, path) => {
    const parts = path.split('/').slice(1);
    if (parts.length > 1 && parts[parts.length - 1] === '') parts.pop();
    const candidates = index.get(`${upstream} ${method} ${parts.length}`);
    if (!candidates) return undefined;
    outer: for (const c of candidates) {
      const params: Record<string, string> = {};
      for (const [i, seg] of c.segments.entries()) {
        const part = parts[i] as string;
        if ('literal' in seg) {
          if (seg.literal !== part) continue outer;
        } else {
          if (part === '') continue outer;
          params[seg.param] = part;
        }
      }
      return { tool: c.tool, params };
    }
    return undefined;
  };
}
