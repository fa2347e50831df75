import type { AssumeRoleConfig, AwsSigV4Config } from './sigv4.js';

/**
 * `credential.provider`: where the value injected for an upstream comes from when it is not a
 * stored string. Secret fields name secrets (store, environment, files), looked up per tenant like
 * any credential secret; nothing here is a secret value.
 */

/** How Valet authenticates to a token endpoint (RFC 6749 §2.3, RFC 7523 §2.2). */
export interface ClientAuth {
  /** `basic`: client_secret_basic; `post`: client_secret_post; `private_key_jwt`: a signed assertion; `none`: a public client. */
  readonly method: 'basic' | 'post' | 'private_key_jwt' | 'none';
  readonly clientId: string;
  /** Secret name of the client secret (`basic`, `post`). */
  readonly clientSecret: string | undefined;
  /** Secret name of the PEM private key (`private_key_jwt`). */
  readonly privateKey: string | undefined;
  readonly keyId: string | undefined;
}

export interface ClientCredentialsConfig {
  readonly kind: 'oauth2_client_credentials';
  readonly tokenUrl: string;
  readonly client: ClientAuth;
  readonly scopes: readonly string[];
  /** RFC 8707 `resource` and the common `audience` parameter, when the server wants them. */
  readonly resource: string | undefined;
  readonly audience: string | undefined;
}

/** A long-lived refresh token (seeded from a secret) that the server may rotate on every use. */
export interface RefreshTokenConfig {
  readonly kind: 'oauth2_refresh_token';
  readonly tokenUrl: string;
  readonly client: ClientAuth;
  /** Secret name of the first refresh token; a new value there starts the grant over. */
  readonly refreshToken: string;
  readonly scopes: readonly string[];
}

/** RFC 7523 JWT bearer grant: Google service accounts and the like. */
export interface JwtBearerConfig {
  readonly kind: 'oauth2_jwt_bearer';
  /** Undefined: the service-account file's `token_uri`. */
  readonly tokenUrl: string | undefined;
  /** Secret name of a PEM private key, or of a Google service-account JSON file. */
  readonly privateKey: string;
  /** `iss`; undefined: the service account's `client_email`. */
  readonly issuer: string | undefined;
  /** `sub` (domain-wide delegation); undefined: none. */
  readonly subject: string | undefined;
  /** `aud`; undefined: the token URL. */
  readonly audience: string | undefined;
  readonly scopes: readonly string[];
  readonly keyId: string | undefined;
  readonly algorithm: 'RS256' | 'ES256';
}

/** A GitHub App's installation token, minted with the app's JWT. */
export interface GitHubAppConfig {
  readonly kind: 'github_app';
  readonly appId: string;
  /** Secret name of the app's PEM private key. */
  readonly privateKey: string;
  readonly installationId: string;
  /** `https://api.github.com`, or a GitHub Enterprise Server's `https://HOST/api/v3`. */
  readonly apiUrl: string;
}

/** RFC 8693: the agent's own token exchanged for one scoped to the upstream. */
export interface TokenExchangeConfig {
  readonly kind: 'oauth2_token_exchange';
  readonly tokenUrl: string;
  readonly client: ClientAuth;
  readonly audience: string | undefined;
  readonly resource: string | undefined;
  readonly scopes: readonly string[];
  readonly requestedTokenType: string | undefined;
}

/** A user's own account, connected through the authorization-code flow with PKCE that Valet runs. */
export interface UserOAuthConfig {
  readonly kind: 'oauth2_user';
  readonly authorizeUrl: string;
  readonly tokenUrl: string;
  readonly client: ClientAuth;
  readonly scopes: readonly string[];
  /** Extra authorization-request parameters (`access_type: offline`, `prompt: consent`). */
  readonly authorizeParams: Readonly<Record<string, string>>;
}

/** An `aws_sigv4` credential's `assume_role`: STS temporary credentials, kept like any obtained token. */
export interface AwsAssumeRoleConfig {
  readonly kind: 'aws_assume_role';
  readonly sigv4: AwsSigV4Config;
  readonly role: AssumeRoleConfig;
}

export type ProviderConfig = ClientCredentialsConfig | RefreshTokenConfig | JwtBearerConfig | GitHubAppConfig | TokenExchangeConfig | UserOAuthConfig | AwsAssumeRoleConfig;

export type ProviderKind = ProviderConfig['kind'];

/** The secret names a provider reads: the start-up check and `valet credentials list` use them. */
export function providerSecrets(p: ProviderConfig): string[] {
  const client = (c: ClientAuth): (string | undefined)[] => [c.clientSecret, c.privateKey];
  const names: (string | undefined)[] =
    p.kind === 'oauth2_client_credentials' || p.kind === 'oauth2_token_exchange' || p.kind === 'oauth2_user'
      ? client(p.client)
      : p.kind === 'oauth2_refresh_token'
        ? [...client(p.client), p.refreshToken]
        : p.kind === 'aws_assume_role'
          ? [p.sigv4.accessKeyId, p.sigv4.secretAccessKey, p.sigv4.sessionToken]
          : [p.privateKey];
  return [...new Set(names.filter((n): n is string => n !== undefined))];
}

/** Where a provider gets its tokens: for messages and lists (no query, which might carry something). */
export function providerEndpoint(p: ProviderConfig): string | null {
  const url = p.kind === 'github_app' ? `${p.apiUrl}/app/installations/${p.installationId}/access_tokens` : p.kind === 'aws_assume_role' ? p.role.stsEndpoint : p.tokenUrl;
  if (url === undefined) return null;
  const u = new URL(url);
  return `${u.origin}${u.pathname}`;
}
