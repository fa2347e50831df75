/**
 * Where upstream credentials come from. The request path sees one `SecretSource`; the composition
 * root builds it from the configured sources (`gateway.secrets.sources`) with {@link chainSources}.
 */
export interface SecretSource {
  /**
   * The value to inject for `name` when an agent of `tenant` calls, or undefined when this source
   * does not have it. Throws a `ValetError` when it has the secret but cannot produce it safely
   * (a stored value that fails its integrity check): the request must then be refused, not served
   * from a later source.
   */
  get(name: string, tenant: string | undefined): string | undefined;
}

/** A configured source, as the composition root sees it. */
export interface NamedSecretSource extends SecretSource {
  /** `store`, `env` or `files:<dir>`, for the start-up log. */
  readonly label: string;
  /** Whether the source has `name` for at least one tenant (or shared); for the start-up check. */
  has(name: string): boolean;
}

/** Asks each source in order; the first that has the secret answers. */
export function chainSources(sources: readonly SecretSource[]): SecretSource {
  if (sources.length === 1) return sources[0] as SecretSource;
  return {
    get(name, tenant) {
      for (const source of sources) {
        const value = source.get(name, tenant);
        if (value !== undefined) return value;
      }
      return undefined;
    },
  };
}

/**
 * Characters a credential may not contain: CR, LF and NUL could split or end a header, and the
 * other C0 controls and DEL are refused by HTTP header parsers. Horizontal tab is allowed.
 */
export const UNSAFE_VALUE = /[\x00-\x08\x0a-\x1f\x7f]/;

/** Names of secrets: what `credential.secret` accepts (and what an environment variable can be called). */
export const SECRET_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
