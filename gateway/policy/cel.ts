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

const environment = (() => {
  const env = new Environment({ homogeneousAggregateLiterals: false, limits: { maxAstNodes: 2_000, maxDepth: 64 } });
  for (const [name, type] of Object.entries(CEL_VARIABLES)) env.registerVariable(name, type);
  return env;
})();

export type CelProgram = ((activation: Record<string, unknown>) => unknown) & { readonly source: string; readonly readsArgs: boolean };

/** Compiles and type-checks a CEL expression once; `expect` is the result type it must have. */
export function compileCel(source: string, expect: 'bool' | 'number' | 'any'): CelProgram | { error: string } {
  const checked = environment.check(source);
  if (!checked.valid) return { error: firstLine(checked.error?.message ?? 'invalid expression') };
  const type = checked.type ?? 'dyn';
  if (expect === 'bool' && type !== 'bool' && type !== 'dyn') return { error: `must be a bool expression, not ${type}` };
  if (expect === 'number' && !['int', 'uint', 'double', 'dyn'].includes(type)) return { error: `must be a number expression, not ${type}` };
  const run = environment.parse(source);
  return Object.assign((activation: Record<string, unknown>) => run(activation), { source, readsArgs: /\bargs\b/.test(source) });
}

function firstLine(message: string): string {
  return message.split('\n')[0] ?? message;
}

/** A CEL runtime error as a one-line, secret-free reason. */
export function celErrorMessage(err: unknown): string {
  return firstLine(err instanceof Error ? err.message : String(err));
}
