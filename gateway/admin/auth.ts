import { ValetError } from '../errors.js';
import type { AgentIdentity } from '../types.js';

/**
 * What an admin-plane role may do. Roles come from the admin token's roles claim (the issuer's
 * `claims.roles`); tokens for the admin plane carry their own audience (`gateway.admin.audience`),
 * so an agent token is never an admin token and the reverse.
 */
export const ADMIN_ROLES = {
  admin: ['audit.read', 'approvals.read', 'approvals.resolve', 'policy.read', 'policy.reload', 'secrets.read', 'secrets.write'],
  approver: ['approvals.read', 'approvals.resolve', 'policy.read'],
  auditor: ['audit.read', 'approvals.read', 'policy.read', 'secrets.read'],
  secrets_manager: ['secrets.read', 'secrets.write', 'policy.read'],
} as const;

export type AdminRole = keyof typeof ADMIN_ROLES;
export type Permission = (typeof ADMIN_ROLES)[AdminRole][number];

/** A person (or script) on the admin plane. With `tenant` set, every view is limited to that tenant. */
export interface AdminIdentity {
  readonly subject: string;
  readonly tenant: string | undefined;
  readonly roles: readonly AdminRole[];
  readonly permissions: ReadonlySet<Permission>;
  /** Approver groups from the token's groups claim; undefined when the token carries none. */
  readonly groups: readonly string[] | undefined;
}

/** Turns a verified admin token's claims into an admin identity; unknown roles grant nothing. */
export function adminIdentity(verified: AgentIdentity): AdminIdentity {
  const roles = verified.roles.filter((r): r is AdminRole => Object.hasOwn(ADMIN_ROLES, r));
  const permissions = new Set<Permission>(roles.flatMap((r) => ADMIN_ROLES[r]));
  // The subject is the token's `sub` (for an RFC 8693 token, the human it was issued for).
  return { subject: verified.user ?? verified.agent, tenant: verified.tenant, roles, permissions, groups: verified.groups };
}

/** Throws 403 unless the identity holds the permission. */
export function requirePermission(who: AdminIdentity, permission: Permission): void {
  if (!who.permissions.has(permission)) {
    throw new ValetError('VALET_ERR_ADMIN_FORBIDDEN', `This action needs the "${permission}" permission, which none of your roles grants.`);
  }
}

/**
 * The tenant a request may act on. A tenant admin is pinned to its own tenant (asking for another
 * is refused, not silently rewritten); an organisation-wide admin may name any tenant or none.
 */
export function tenantScope(who: AdminIdentity, requested: string | undefined): string | undefined {
  if (who.tenant === undefined) return requested;
  if (requested !== undefined && requested !== who.tenant) {
    throw new ValetError('VALET_ERR_ADMIN_FORBIDDEN', 'A tenant admin can only act on its own tenant.');
  }
  return who.tenant;
}
