import { parseArgs } from 'node:util';
import { secretNames } from '../config/credential.js';
import { loadConfig } from '../config/load.js';
import type { UpstreamConfig } from '../config/types.js';
import { credentialSummary, grantJson } from '../admin/credentials.js';
import { CredentialService } from '../credentials/service.js';
import { memoryGrants } from '../secrets/grants.js';
import { ValetError } from '../errors.js';
import { createSecretSources, DEFAULT_SOURCES } from '../secrets/sources.js';
import { gatewayEnvironment } from './environment.js';
import { UsageError } from './usage.js';

export const CREDENTIALS_USAGE = `  valet credentials list [--tenant T] [--user U] [--format table|json]
                                           each upstream's credential: static or its provider, the secrets it
                                           needs and whether the sources have them, and the tokens Valet holds
                                           (status, expiry, last refresh; never a value)
  valet credentials test UPSTREAM [--tenant T]
                                           a provider: obtain a token now (exit 1 with the endpoint's answer if not);
                                           static: check its secrets are there
  valet credentials connect UPSTREAM       where a person connects their own account (the admin plane's page)
  valet credentials revoke UPSTREAM [--tenant T] [--user U]
                                           forget a held grant (a user's connected account with --user); the next
                                           call starts over, or needs the user to connect again`;

/**
 * `valet credentials list|test`: what each upstream injects and whether Valet can produce it, read
 * through the same secret sources the gateway uses (store, environment, files), never showing a value.
 */
export async function credentialsCommand(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  let parsed: ReturnType<typeof parse>;
  const parse = (a: string[]) =>
    parseArgs({ args: a, options: { config: { type: 'string' }, data: { type: 'string' }, tenant: { type: 'string' }, user: { type: 'string' }, format: { type: 'string' }, env: { type: 'string' } }, allowPositionals: true, strict: true });
  try {
    parsed = parse(rest);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  if (sub !== 'list' && sub !== 'test' && sub !== 'connect' && sub !== 'revoke') throw new UsageError('valet credentials list|test|connect|revoke');
  const config = loadConfig(values.config ?? process.env['VALET_CONFIG'] ?? 'policies', { environment: gatewayEnvironment(values.env, process.env) });
  const silent = { info: () => undefined, warn: () => undefined, error: (o: object, m: string) => process.stderr.write(`${m} ${JSON.stringify(o)}\n`) };
  const sources = await createSecretSources({
    settings: config.gateway.secrets?.sources ?? DEFAULT_SOURCES,
    backend: config.gateway.secrets,
    names: [...config.upstreams.values()].flatMap((u) => secretNames(u.credential)),
    dataDir: values.data ?? process.env['VALET_DATA'] ?? 'data',
    env: process.env,
    environment: config.gateway.environment,
    log: silent,
  });
  const tenant = values.tenant;
  try {
    const has = (name: string): boolean => {
      try {
        const v = sources.source.get(name, tenant);
        return v !== undefined && v !== '';
      } catch {
        return false;
      }
    };
    const credentials = new CredentialService({
      upstreams: config.upstreams.values(),
      grants: sources.store?.grants ?? memoryGrants(),
      secrets: sources.source,
      publicUrl: () => config.gateway.admin.publicUrl ?? process.env['VALET_ADMIN_PUBLIC_URL'] ?? `http://${config.gateway.admin.listen.host}:${config.gateway.admin.listen.port}`,
    });
    const summary = (u: UpstreamConfig) => credentialSummary(u, has) as { upstream: string; kind: string; inject: string; endpoint: string | null; secrets: { name: string; available: boolean }[] };
    if (sub === 'list') {
      const rows = [...config.upstreams.values()].map(summary);
      const grants = (sources.store === undefined ? [] : await credentials.list({ tenant, user: values.user })).map(grantJson);
      if (values.format === 'json') process.stdout.write(`${JSON.stringify({ upstreams: rows, grants }, null, 2)}\n`);
      else {
        table([['UPSTREAM', 'KIND', 'INJECT', 'SECRETS', 'TOKEN ENDPOINT'], ...rows.map((r) => [r.upstream, r.kind, r.inject, r.secrets.map((x) => `${x.name}${x.available ? '' : ' (missing)'}`).join(', '), r.endpoint ?? '-'])]);
        if (grants.length > 0) {
          process.stdout.write('\n');
          const at = (v: unknown): string => (typeof v === 'string' ? v : '-');
          table([['HELD FOR', 'TENANT', 'USER', 'STATUS', 'EXPIRES', 'REFRESHED', 'REFRESH TOKEN'], ...grants.map((g) => [at(g['upstream']), at(g['tenant']), at(g['user']), `${at(g['status'])}${g['problem'] !== null ? ` (${at(g['problem'])})` : ''}`, at(g['expires_at']), at(g['refreshed_at']), g['has_refresh_token'] === true ? 'yes' : 'no'])]);
        }
      }
      return;
    }
    const name = positionals[0];
    const upstream = name === undefined ? undefined : config.upstreams.get(name);
    if (upstream === undefined) throw new UsageError(`valet credentials ${sub} needs an upstream of ${config.dir}${name === undefined ? '' : ` (no "${name}")`}`);
    const r = summary(upstream);
    if (sub === 'connect') {
      if (r.kind !== 'oauth2_user') throw new UsageError(`upstream ${upstream.name} does not use people's own accounts (its provider is ${r.kind})`);
      process.stdout.write(`Open ${credentials.connectUrl(upstream.name)} in your browser and sign in with your admin-plane token to connect your ${upstream.name} account.\n`);
      return;
    }
    if (sub === 'revoke') {
      if (sources.store === undefined) throw new UsageError('valet credentials revoke needs the secret store (gateway.secrets.sources has no "store")');
      const n = await credentials.revoke(upstream.name, tenant ?? null, values.user ?? null);
      process.stdout.write(`revoked ${n} grant${n === 1 ? '' : 's'} of ${upstream.name}${tenant === undefined ? '' : ` for tenant ${tenant}`}${values.user === undefined ? '' : ` for user ${values.user}`}; running gateways stop using it within 5 s\n`);
      return;
    }
    const missing = r.secrets.filter((x) => !x.available).map((x) => x.name);
    if (missing.length > 0) throw new ValetError('VALET_ERR_CREDENTIAL_UNAVAILABLE', `${upstream.name}: no source has ${missing.join(', ')}${tenant === undefined ? '' : ` for tenant ${tenant}`}`);
    const cache = credentials.cache(upstream.name);
    if (cache !== undefined && cache.kind !== 'oauth2_user' && cache.kind !== 'oauth2_token_exchange') {
      const { expiresAt } = await cache.probe({ tenant, user: undefined });
      process.stdout.write(`ok: ${upstream.name} obtained a token from ${r.endpoint}, valid for ${Math.round((expiresAt - Date.now()) / 1000)} s\n`);
    } else {
      process.stdout.write(`ok: ${upstream.name} has ${r.secrets.map((x) => x.name).join(', ')}${tenant === undefined ? '' : ` for tenant ${tenant}`}${cache === undefined ? '' : ` (its tokens are obtained per ${cache.kind === 'oauth2_user' ? 'user' : 'agent token'} at call time)`}\n`);
    }
  } finally {
    await sources.close();
  }
}

function table(lines: string[][]): void {
  const widths = (lines[0] ?? []).map((_, i) => Math.max(...lines.map((l) => (l[i] ?? '').length)));
  for (const l of lines) process.stdout.write(`${l.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()}\n`);
}
