export type Environment = 'development' | 'staging' | 'production';

export interface GatewaySettings {
  readonly environment: Environment;
  readonly listen: { readonly host: string; readonly port: number };
  readonly shutdownGraceMs: number;
  readonly maxHeaderBytes: number;
}

export type IssuerKey =
  | { readonly kind: 'secret'; readonly env: string; readonly generate: boolean }
  | { readonly kind: 'public_key_file'; readonly path: string }
  | { readonly kind: 'jwks_file'; readonly path: string }
  | { readonly kind: 'jwks_url'; readonly url: string };

export interface ClaimNames {
  readonly tenant: string;
  readonly team: string;
  readonly roles: string;
  readonly environment: string;
  readonly user: string;
}

export interface IssuerConfig {
  readonly name: string;
  readonly issuer: string;
  readonly audience: readonly string[];
  readonly algorithms: readonly string[];
  readonly clockSkewS: number;
  readonly key: IssuerKey;
  readonly claims: ClaimNames;
}

export type CredentialScheme =
  | { readonly scheme: 'bearer' }
  | { readonly scheme: 'header'; readonly header: string; readonly prefix: string }
  | { readonly scheme: 'basic'; readonly username: string | undefined }
  | { readonly scheme: 'query'; readonly param: string };

export type CredentialConfig = CredentialScheme & { readonly secret: string };

export interface UpstreamConfig {
  readonly name: string;
  /** `scheme://host[:port]`, nothing else. */
  readonly origin: string;
  /** Lower-case header the upstream's SDK puts its API key in (`authorization` means Bearer). */
  readonly agentTokenHeader: string;
  /** Query parameter that may carry the agent token; off unless configured. */
  readonly agentTokenQuery: string | undefined;
  readonly credential: CredentialConfig;
  readonly timeouts: { readonly connectMs: number; readonly headersMs: number; readonly bodyMs: number };
  readonly connections: number;
}

export interface RuleConfig {
  readonly id: string;
  readonly description: string | undefined;
  readonly upstream: string | undefined;
  readonly methods: readonly string[] | undefined;
  readonly paths: readonly string[] | undefined;
  readonly effect: 'allow' | 'deny';
  readonly reason: string | undefined;
  /** Where the rule is written, for explanations and error messages. */
  readonly source: string;
}

/** The validated, frozen configuration; built once at start. */
export interface Config {
  readonly dir: string;
  /** Content hash of every file read, in order. */
  readonly version: string;
  readonly gateway: GatewaySettings;
  readonly issuers: readonly IssuerConfig[];
  readonly upstreams: ReadonlyMap<string, UpstreamConfig>;
  readonly rules: readonly RuleConfig[];
}
