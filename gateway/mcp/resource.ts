import type { Config, UpstreamConfig } from '../config/types.js';

/**
 * MCP authorization (2025-06-18) makes an MCP server an OAuth protected resource: clients that do
 * OAuth discovery read its RFC 9728 metadata to learn which authorization servers issue tokens for
 * it. Valet is that resource for its MCP upstreams — it accepts the agent tokens its issuers sign,
 * and never passes them on — so it publishes the metadata itself, at the well-known URL RFC 9728
 * §3.1 derives from the resource's URL, and points to it from every 401.
 */
export const PROTECTED_RESOURCE_PREFIX = '/.well-known/oauth-protected-resource';

/** The metadata URL of the resource at `origin` + `path` (RFC 9728 §3.1: the well-known segment goes before the path). */
export function metadataUrl(origin: string, path: string): string {
  return `${origin}${PROTECTED_RESOURCE_PREFIX}${path === '/' ? '' : path}`;
}

/**
 * The metadata document for a request to `/.well-known/oauth-protected-resource/<upstream>/...`,
 * or undefined when the path names no MCP upstream. `resource` is the MCP endpoint's URL as the
 * client reached Valet; the authorization servers are the issuers whose tokens Valet accepts.
 */
export function protectedResourceMetadata(config: Pick<Config, 'upstreams' | 'issuers'>, path: string, origin: string): Record<string, unknown> | undefined {
  const rest = path.slice(PROTECTED_RESOURCE_PREFIX.length);
  const name = rest.split('/')[1] ?? '';
  const upstream: UpstreamConfig | undefined = config.upstreams.get(name);
  if (upstream?.kind !== 'mcp' || !rest.startsWith(`/${name}`)) return undefined;
  return {
    resource: `${origin}${rest}`,
    authorization_servers: [...new Set(config.issuers.map((i) => i.issuer))],
    bearer_methods_supported: ['header'],
    resource_name: `${upstream.name} (MCP, through Valet)`,
  };
}
