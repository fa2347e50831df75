import { defineConfig } from 'vitest/config';

/**
 * Two projects. `embedded`: every suite, each gateway on SQLite with in-memory counters (what
 * `npm start` runs). `shared`: the suites that run gateways (integration, security, browser) again,
 * each deployment on PostgreSQL (audit, approvals, secrets) and Redis (counters) — see
 * test/helpers/backends.ts. Left out of `shared`: suites that already choose their backends
 * themselves (the fleet, PostgreSQL, Redis and migration suites) and suites about the SQLite files.
 */
const gatewaySuites = ['test/integration/**/*.test.ts', 'test/security/**/*.test.ts', 'test/browser/**/*.test.ts'];
// expect.poll waits up to 10 s (vitest's default is 1 s): on a loaded 2-core machine a dashboard
// page may take longer than that to render, which is not what a browser test checks.
const common = { testTimeout: 20_000, hookTimeout: 20_000, pool: 'forks' as const, expect: { poll: { timeout: 10_000 } } };

export default defineConfig({
  test: {
    projects: [
      { test: { ...common, name: 'embedded', include: ['test/**/*.test.ts'] } },
      {
        test: {
          ...common,
          name: 'shared',
          include: gatewaySuites,
          exclude: [
            // They pick PostgreSQL, Redis or SQLite per test already.
            'test/integration/fleet*.test.ts',
            'test/integration/postgres-outage.test.ts',
            'test/integration/audit-postgres.test.ts',
            'test/integration/counters-redis.test.ts',
            'test/integration/migrate-cli.test.ts',
            // About the embedded engine itself: SQLite's WAL, writer thread, file lock and fsync, and
            // the development master key kept in the data directory. Their PostgreSQL counterparts
            // are in fleet.test.ts (kill -9 under load), postgres-outage.test.ts (the server gone),
            // unit/audit-postgres.test.ts (refused commits, fail_open) and the PostgreSQL part of
            // secrets-cli.test.ts, which both projects run.
            'test/integration/audit-wal.test.ts',
            'test/integration/audit-writer.test.ts',
            'test/integration/audit-durability.test.ts',
            'test/integration/audit-journal.test.ts',
            'test/integration/secrets-cli.test.ts',
          ],
          env: { VALET_TEST_BACKENDS: 'shared' },
          setupFiles: ['test/helpers/shared-setup.ts'],
        },
      },
    ],
  },
});
