import type { CredentialConfig, Template } from './types.js';
import { providerSecrets } from '../credentials/types.js';

const SECRET_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;

/**
 * Request headers Valet may not be told to inject: it sets them itself (`host`, framing,
 * `x-request-id`, `accept-encoding` while scrubbing), they describe one hop, or they say how to
 * read the body the policy has already read (`content-type`, `content-encoding`).
 */
export const NOT_INJECTABLE = new Set([
  'host',
  'content-length',
  'content-type',
  'content-encoding',
  'transfer-encoding',
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'upgrade',
  'proxy-authenticate',
  'proxy-authorization',
  'expect',
  'accept-encoding',
  'x-request-id',
]);

/**
 * Parses a header value template: literal text with `{secret}` (the credential's `secret`) and
 * `{secret:NAME}` (any named secret) placeholders. Braces are reserved for placeholders so that a
 * typo such as `{secert}` is an error rather than literal text sent upstream.
 */
export function parseTemplate(text: string, defaultSecret: string | undefined): { template: Template } | { error: string } {
  const parts: (string | { secret: string })[] = [];
  let rest = text;
  while (rest !== '') {
    const open = rest.indexOf('{');
    const close = rest.indexOf('}');
    if (open === -1 && close === -1) {
      parts.push(rest);
      break;
    }
    if (close !== -1 && (open === -1 || close < open)) return { error: 'a "}" without "{"; braces are only for {secret} and {secret:NAME}' };
    if (open > 0) parts.push(rest.slice(0, open));
    const end = rest.indexOf('}', open);
    if (end === -1) return { error: 'a "{" without "}"; braces are only for {secret} and {secret:NAME}' };
    const inner = rest.slice(open + 1, end);
    if (inner === 'secret') {
      if (defaultSecret === undefined) return { error: '"{secret}" needs the credential\'s "secret" (or write {secret:NAME})' };
      parts.push({ secret: defaultSecret });
    } else if (inner.startsWith('secret:') && SECRET_NAME.test(inner.slice(7))) {
      parts.push({ secret: inner.slice(7) });
    } else {
      return { error: `unknown placeholder "{${inner}}"; write {secret} or {secret:NAME}` };
    }
    rest = rest.slice(end + 1);
  }
  return { template: parts };
}

/** The names of the secrets a template uses, in order of first use. */
export function templateSecrets(template: Template): string[] {
  const names = new Set<string>();
  for (const part of template) if (typeof part !== 'string') names.add(part.secret);
  return [...names];
}

/**
 * Every secret this credential needs, each once. A request is forwarded only if all of them
 * resolve; the secret store and the start-up check use this list.
 */
/** The name a provider's token is injected under: not a valid secret name, so it names no stored secret. */
export const providedSecret = (upstream: string): string => `provider:${upstream}`;

/** The name a stdio MCP bridge's token is injected under (like {@link providedSecret}, no stored secret can have it). */
export const stdioSecret = (upstream: string): string => `stdio:${upstream}`;

export function secretNames(credential: CredentialConfig): string[] {
  if (credential.scheme === 'bearer' && credential.secret.startsWith('stdio:')) return [];
  if ((credential.scheme === 'bearer' || credential.scheme === 'header') && credential.provider !== undefined) return providerSecrets(credential.provider);
  if (credential.scheme === 'aws_sigv4') return [credential.accessKeyId, credential.secretAccessKey, ...(credential.sessionToken === undefined ? [] : [credential.sessionToken])];
  if (credential.scheme !== 'headers') return [credential.secret];
  return [...new Set(credential.headers.flatMap((h) => templateSecrets(h.value)))];
}
