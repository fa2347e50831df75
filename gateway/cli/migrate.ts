import { parseArgs } from 'node:util';
import { loadConfig } from '../config/load.js';
import { migrateSharedBackends } from '../migrate.js';
import { UsageError } from './usage.js';

export const MIGRATE_USAGE = `  valet migrate [--config DIR]             create or upgrade the PostgreSQL schemas of the shared backends the
                                           configuration or VALET_POSTGRES_URL selects (instances also do it at start)`;

/** `valet migrate`: the schema step of a deploy, before (or beside) the instances starting. */
export async function migrateCommand(args: string[]): Promise<void> {
  let config: string | undefined;
  try {
    config = parseArgs({ args, options: { config: { type: 'string' } }, strict: true }).values.config;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const done = await migrateSharedBackends(loadConfig(config ?? process.env['VALET_CONFIG'] ?? 'policies'), process.env);
  if (done.length === 0) {
    process.stdout.write('nothing to migrate: every backend is in the data directory (SQLite files are migrated when opened)\n');
    return;
  }
  for (const m of done) process.stdout.write(`migrated: ${m.kind} (${m.where})\n`);
}
