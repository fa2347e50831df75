import type { AuditDurability } from '../../gateway/config/types.js';

/** `--durability`: Valet's gateway.audit.durability, `strict` when absent; anything else exits 2. */
export function durabilityOption(raw: string | undefined): AuditDurability {
  const d = raw ?? 'strict';
  if (d !== 'strict' && d !== 'crash' && d !== 'async') {
    console.error(`--durability ${d}: use strict, crash or async`);
    process.exit(2);
  }
  return d;
}

/**
 * A numeric command-line option: `fallback` when absent or empty; otherwise a finite number of at
 * least `min`, or the benchmark exits 2 naming the option.
 */
export function numberOption(raw: string | undefined, name: string, fallback: number, min: number): number {
  if (raw === undefined || raw === '') return fallback;
  const v = Number(raw);
  if (!Number.isFinite(v) || v < min) {
    console.error(`invalid value "${raw}" for --${name} (minimum ${min})`);
    process.exit(2);
  }
  return v;
}
