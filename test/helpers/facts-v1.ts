import { createCipheriv, randomBytes } from 'node:crypto';
import type { FactsKey } from '../../gateway/audit/facts.js';

/**
 * One row's facts sealed as gateways before batches wrote them (gateway/audit/facts.ts, `v1`):
 * `v1.<key id>.<base64url(nonce | ciphertext | tag)>`, AES-256-GCM bound to the request id. The
 * gateway only reads this form now; tests make rows of it to show they still open.
 */
export function sealFactsV1(key: FactsKey, requestId: string, plain: string): string {
  const nonce = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key.facts, nonce, { authTagLength: 16 });
  cipher.setAAD(Buffer.from(JSON.stringify(['valet-audit-facts/v1', requestId]), 'utf8'));
  const sealed = Buffer.concat([nonce, cipher.update(plain, 'utf8'), cipher.final(), cipher.getAuthTag()]);
  return `v1.${key.id}.${sealed.toString('base64url')}`;
}
