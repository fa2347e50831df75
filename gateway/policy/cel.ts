import { Environment } from '@marcbachmann/cel-js';

/** The variables a condition can read; anything else is a load-time error. */
export const CEL_VARIABLES = {
  args: 'map',
  agent: 'map',
  user: 'map',
  principal: 'map',
  request: 'map',
  time: 'map',
  history: 'map',
  ctx: 'map',
  env: 'string',
} as const;

/**
 * The hidden member of the `user` variable that answers `user.connected("github")`: a function of
 * the upstream's name, bound to the user and tenant when the variable is built. A map without it
 * (no user, or `policy test`) has connected nothing.
 */
export const CONNECTED = Symbol('connected');

/** A response rule's `keep` condition also reads `match`: the text a redaction pattern found. */
export const MATCH_VARIABLE = 'match';

const newEnvironment = (extra: Readonly<Record<string, string>>): Environment => {
  const env = new Environment({ homogeneousAggregateLiterals: false, limits: { maxAstNodes: 2_000, maxDepth: 64 } });
  for (const [name, type] of Object.entries({ ...CEL_VARIABLES, ...extra })) env.registerVariable(name, type);
  env.registerFunction({
    name: 'connected',
    receiverType: 'map',
    returnType: 'bool',
    description: 'Whether the user has connected an account for the upstream (credential provider oauth2_user)',
    params: [{ name: 'upstream', type: 'string' }],
    handler: (m: Record<PropertyKey, unknown>, upstream: string) => {
      const f = m[CONNECTED];
      return typeof f === 'function' ? (f as (u: string) => boolean)(upstream) === true : false;
    },
  });
  return env;
};
const environment = newEnvironment({});
const matchEnvironment = newEnvironment({ [MATCH_VARIABLE]: 'string' });

export type CelProgram = ((activation: Record<string, unknown>) => unknown) & { readonly source: string; readonly readsArgs: boolean };

/** Compiles and type-checks a CEL expression once; `expect` is the result type it must have. */
export function compileCel(source: string, expect: 'bool' | 'number' | 'any', withMatch = false): CelProgram | { error: string } {
  const env = withMatch ? matchEnvironment : environment;
  const checked = env.check(source);
  if (!checked.valid) return { error: firstLine(checked.error?.message ?? 'invalid expression') };
  const type = checked.type ?? 'dyn';
  if (expect === 'bool' && type !== 'bool' && type !== 'dyn') return { error: `must be a bool expression, not ${type}` };
  if (expect === 'number' && !['int', 'uint', 'double', 'dyn'].includes(type)) return { error: `must be a number expression, not ${type}` };
  const run = env.parse(source);
  return Object.assign((activation: Record<string, unknown>) => run(activation), { source, readsArgs: /\bargs\b/.test(source) });
}

function firstLine(message: string): string {
  return message.split('\n')[0] ?? message;
}

/** A CEL runtime error as a one-line, secret-free reason. */
export function celErrorMessage(err: unknown): string {
  return firstLine(err instanceof Error ? err.message : String(err));
}
