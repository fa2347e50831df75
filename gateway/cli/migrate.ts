import { parseArgs } from 'node:util';
import { loadConfig } from '../config/load.js';
import { migrateSharedBackends } from '../migrate.js';
import { importFromSqlite } from '../migrate-sqlite.js';
import { UsageError } from './usage.js';

export const MIGRATE_USAGE = `  valet migrate [--config DIR]             create or upgrade the PostgreSQL schemas of the shared backends the
                                           configuration or VALET_POSTGRES_URL selects (instances also do it at start)
  valet migrate --from sqlite [--config DIR] [--data DIR]
                                           move a stopped embedded gateway's audit log (chain intact), approvals and
                                           secrets from the data directory into those (empty) PostgreSQL backends`;

/** `valet migrate`: the schema step of a deploy, before (or beside) the instances starting. */
export async function migrateCommand(args: string[]): Promise<void> {
  let values: { config?: string | undefined; data?: string | undefined; from?: string | undefined };
  try {
    values = parseArgs({ args, options: { config: { type: 'string' }, data: { type: 'string' }, from: { type: 'string' } }, strict: true }).values;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values.from !== undefined && values.from !== 'sqlite') throw new UsageError(`--from: only sqlite (the data directory of an embedded gateway), not ${values.from}`);
  if (values.from === undefined && values.data !== undefined) throw new UsageError('--data is for --from sqlite');
  const config = loadConfig(values.config ?? process.env['VALET_CONFIG'] ?? 'policies');
  if (values.from === 'sqlite') {
    const dataDir = values.data ?? process.env['VALET_DATA'] ?? 'data';
    for (const m of await importFromSqlite(config, dataDir, process.env)) process.stdout.write(`copied: ${m.kind}: ${m.summary}\n`);
    process.stdout.write('counters (rate-limit windows, call history) are not copied: they start afresh in Redis\n');
    return;
  }
  const done = await migrateSharedBackends(config, process.env);
  if (done.length === 0) {
    process.stdout.write('nothing to migrate: every backend is in the data directory (SQLite files are migrated when opened)\n');
    return;
  }
  for (const m of done) process.stdout.write(`migrated: ${m.kind} (${m.where})\n`);
}
