/** Longest value kept for one argument (characters of its JSON); longer ones are replaced by a note. */
const MAX_VALUE = 512;

/**
 * The arguments a tool lists in `audit_args`, as the JSON kept in the audit row's `args` column:
 * `{"amount":5000,"currency":"usd"}`, names in the order listed, arguments absent from the request
 * left out. Nothing else of a request's body or query is ever stored. A value whose JSON is longer
 * than 512 characters is kept as `"[512+ characters]"`, so one argument cannot bloat the log.
 * Null when the tool keeps nothing (or the request matched no tool). Any string containing one
 * of `never` (the agent's own token, should it send it as an argument) is kept as `[redacted]`.
 */
export function keptArguments(
  args: Readonly<Record<string, unknown>>,
  names: readonly string[] | undefined,
  never: readonly string[] = [],
): string | null {
  if (names === undefined || names.length === 0) return null;
  const clean = (_k: string, x: unknown): unknown => {
    if (typeof x === 'bigint') return Number(x);
    if (typeof x === 'string' && never.some((n) => n !== '' && x.includes(n))) return '[redacted]';
    return x;
  };
  const kept: Record<string, unknown> = {};
  let any = false;
  for (const name of names) {
    if (!Object.hasOwn(args, name)) continue;
    const v = args[name];
    const json = JSON.stringify(v, clean);
    kept[name] = json === undefined ? null : json.length > MAX_VALUE ? `[${MAX_VALUE}+ characters]` : v;
    any = true;
  }
  return any ? JSON.stringify(kept, clean) : null;
}
