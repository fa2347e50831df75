import { resolve } from 'node:path';
import { ValetError } from '../errors.js';
import { readKeyFile } from '../secrets/master-key.js';
import type { SecretInfo, SecretStore } from '../secrets/port.js';
import { tenantScope, type AdminIdentity } from './auth.js';
import type { AdminRoute } from './server.js';

/**
 * Secret management on the admin API: the same operations as `valet secrets`, write-only for
 * values (no route returns one). A tenant admin manages only its tenant's secrets; shared secrets
 * (tenant `null`) are for organisation-wide admins. Rekeying names a key *file* on the gateway's
 * host (a mounted secret): the new master key never travels over the API.
 */
export function secretRoutes(store: SecretStore): AdminRoute[] {
  return [
    {
      method: 'GET',
      path: '/api/secrets',
      permission: 'secrets.read',
      handle: async ({ who, query }) => {
        const requested = query.get('tenant') ?? undefined;
        const shared = query.get('shared') === 'true';
        if (shared && who.tenant !== undefined) throw new ValetError('VALET_ERR_ADMIN_FORBIDDEN', 'A tenant admin cannot see shared secrets.');
        const tenant = shared ? null : tenantScope(who, requested);
        return { json: { secrets: (await store.list({ tenant })).map(view) } };
      },
    },
    {
      method: 'POST',
      path: '/api/secrets',
      permission: 'secrets.write',
      handle: async ({ who, body }) => {
        const name = field(body, 'name');
        return { status: 201, json: view(await store.set(name, target(who, body), field(body, 'value'))) };
      },
    },
    {
      method: 'PUT',
      path: '/api/secrets/:name',
      permission: 'secrets.write',
      handle: async ({ who, params, body }) => ({ json: view(await store.rotate(params['name'] as string, target(who, body), field(body, 'value'))) }),
    },
    {
      method: 'DELETE',
      path: '/api/secrets/:name',
      permission: 'secrets.write',
      handle: async ({ who, params, query }) => {
        const t = query.get('tenant');
        await store.remove(params['name'] as string, target(who, t === null ? {} : { tenant: t }));
        return { json: { removed: params['name'] } };
      },
    },
    {
      method: 'POST',
      path: '/api/secrets/rekey',
      permission: 'secrets.write',
      handle: async ({ who, body }) => {
        if (who.tenant !== undefined) throw new ValetError('VALET_ERR_ADMIN_FORBIDDEN', 'Rekeying re-encrypts every tenant\'s secrets; it needs an organisation-wide admin.');
        const path = resolve(field(body, 'new_key_file'));
        const r = await store.rekey(readKeyFile(path, `new_key_file (${path})`));
        return {
          json: {
            secrets: r.secrets,
            versions: r.versions,
            grants: r.grants,
            old_key_id: r.oldKeyId,
            new_key_id: r.newKeyId,
            next_step: 'This gateway now uses the new key. Point VALET_MASTER_KEY or VALET_MASTER_KEY_FILE at it before the next start.',
          },
        };
      },
    },
    {
      method: 'POST',
      path: '/api/secrets/import',
      permission: 'secrets.write',
      handle: async ({ who, body }) => ({ json: await store.importText(field(body, 'text'), target(who, body)) }),
    },
  ];
}

/** The tenant a write applies to: a tenant admin's own; for others `tenant` from the body, absent = shared. */
function target(who: AdminIdentity, body: Record<string, unknown>): string | null {
  const t = body['tenant'];
  if (t !== undefined && t !== null && typeof t !== 'string') throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', '"tenant" must be a string or null.');
  return tenantScope(who, t ?? undefined) ?? null;
}

function field(body: Record<string, unknown>, name: string): string {
  const v = body[name];
  if (typeof v !== 'string') throw new ValetError('VALET_ERR_ADMIN_BAD_REQUEST', `"${name}" must be a string.`);
  return v;
}

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());

function view(s: SecretInfo): Record<string, unknown> {
  return {
    name: s.name,
    tenant: s.tenant,
    version: s.version,
    created_at: iso(s.createdAt),
    rotated_at: iso(s.rotatedAt),
    last_used_at: iso(s.lastUsedAt),
  };
}
