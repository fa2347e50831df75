import { parseArgs } from 'node:util';
import { secretNames } from '../config/credential.js';
import { loadConfig } from '../config/load.js';
import type { UpstreamConfig } from '../config/types.js';
import { clientCredentialsProvider } from '../credentials/client-credentials.js';
import { ValetError } from '../errors.js';
import { createSecretSources, DEFAULT_SOURCES } from '../secrets/sources.js';
import { gatewayEnvironment } from './environment.js';
import { UsageError } from './usage.js';

export const CREDENTIALS_USAGE = `  valet credentials list [--tenant T] [--format table|json]
                                           each upstream's credential: static or its provider, the secrets it
                                           needs and whether the sources have them (never a value)
  valet credentials test UPSTREAM [--tenant T]
                                           a provider: obtain a token now (exit 1 with the endpoint's answer if not);
                                           static: check its secrets are there`;

interface Row {
  upstream: string;
  kind: string;
  inject: string;
  /** Where a provider gets its tokens: scheme, host and path (no query). */
  endpoint: string | null;
  secrets: { name: string; available: boolean }[];
}

/**
 * `valet credentials list|test`: what each upstream injects and whether Valet can produce it, read
 * through the same secret sources the gateway uses (store, environment, files), never showing a value.
 */
export async function credentialsCommand(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  let parsed: ReturnType<typeof parse>;
  const parse = (a: string[]) =>
    parseArgs({ args: a, options: { config: { type: 'string' }, data: { type: 'string' }, tenant: { type: 'string' }, format: { type: 'string' }, env: { type: 'string' } }, allowPositionals: true, strict: true });
  try {
    parsed = parse(rest);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  if (sub !== 'list' && sub !== 'test') throw new UsageError('valet credentials list|test');
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
    const row = (u: UpstreamConfig): Row => {
      const c = u.credential;
      const provider = (c.scheme === 'bearer' || c.scheme === 'header') && c.provider !== undefined ? c.provider : undefined;
      const endpoint = provider === undefined ? null : ((url) => `${url.origin}${url.pathname}`)(new URL(provider.tokenUrl));
      return { upstream: u.name, kind: provider?.kind ?? 'static', inject: c.scheme, endpoint, secrets: secretNames(c).map((name) => ({ name, available: has(name) })) };
    };
    if (sub === 'list') {
      const rows = [...config.upstreams.values()].map(row);
      if (values.format === 'json') process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
      else {
        const lines = [['UPSTREAM', 'KIND', 'INJECT', 'SECRETS', 'TOKEN ENDPOINT']];
        for (const r of rows) lines.push([r.upstream, r.kind, r.inject, r.secrets.map((x) => `${x.name}${x.available ? '' : ' (missing)'}`).join(', '), r.endpoint ?? '-']);
        const widths = lines[0]!.map((_, i) => Math.max(...lines.map((l) => (l[i] ?? '').length)));
        for (const l of lines) process.stdout.write(`${l.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()}\n`);
      }
      return;
    }
    const name = positionals[0];
    const upstream = name === undefined ? undefined : config.upstreams.get(name);
    if (upstream === undefined) throw new UsageError(`valet credentials test needs an upstream of ${config.dir}${name === undefined ? '' : ` (no "${name}")`}`);
    const r = row(upstream);
    const missing = r.secrets.filter((x) => !x.available).map((x) => x.name);
    if (missing.length > 0) throw new ValetError('VALET_ERR_CREDENTIAL_UNAVAILABLE', `${upstream.name}: no source has ${missing.join(', ')}${tenant === undefined ? '' : ` for tenant ${tenant}`}`);
    const c = upstream.credential;
    if ((c.scheme === 'bearer' || c.scheme === 'header') && c.provider !== undefined) {
      const provider = clientCredentialsProvider(c.provider, { upstream: upstream.name, secret: (n, t) => sources.source.get(n, t ?? undefined) });
      const { expiresAt } = await provider.probe(tenant ?? null);
      process.stdout.write(`ok: ${upstream.name} obtained a token from ${r.endpoint}, valid for ${Math.round((expiresAt - Date.now()) / 1000)} s\n`);
    } else {
      process.stdout.write(`ok: ${upstream.name} has ${r.secrets.map((x) => x.name).join(', ')}${tenant === undefined ? '' : ` for tenant ${tenant}`}\n`);
    }
  } finally {
    await sources.close();
  }
}
