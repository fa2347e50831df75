import { visit } from 'jsonc-parser';

/** A parsed JSON object; `error` says why the bytes could not be read as one. */
export type ParsedBody = { readonly value: Record<string, unknown> | undefined; readonly error: string | undefined };

/** Strict JSON: no comments, no trailing commas, no duplicate keys, an object at the top. */
export function parseJsonObject(bytes: Buffer): ParsedBody {
  const text = new TextDecoder('utf-8', { fatal: false }).decode(bytes);
  if (text.includes('\uFFFD')) return { value: undefined, error: 'the JSON body is not valid UTF-8' };
  const stack: Set<string>[] = [];
  let duplicate: string | undefined;
  let syntax = false;
  visit(
    text,
    {
      onObjectBegin: () => void stack.push(new Set()),
      onObjectEnd: () => void stack.pop(),
      onObjectProperty: (name) => {
        const keys = stack[stack.length - 1];
        if (keys?.has(name)) duplicate ??= name;
        keys?.add(name);
      },
      onError: () => {
        syntax = true;
      },
    },
    { disallowComments: true, allowTrailingComma: false },
  );
  if (syntax) return { value: undefined, error: 'the JSON body is malformed' };
  if (duplicate !== undefined) return { value: undefined, error: `the JSON body repeats the key "${duplicate}"` };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { value: undefined, error: 'the JSON body is malformed' };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return { value: undefined, error: 'the JSON body is not an object' };
  }
  return { value: value as Record<string, unknown>, error: undefined };
}
