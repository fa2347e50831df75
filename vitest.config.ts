import { defineConfig } from 'vitest/config';

/**
 * Two projects. `embedded`: every suite, each gateway on SQLite with in-memory counters (what
 * `npm start` runs). `shared`: the suites that run gateways (integration, security, browser) again,
 * each deployment on PostgreSQL (audit, approvals, secrets) and Redis (counters) — see
 * test/helpers/backends.ts. Left out of `shared`: suites that already choose their backends
 * themselves (the fleet, PostgreSQL, Redis and migration suites) and suites about the SQLite files.
 */
const gatewaySuites = ['test/integration/**/*.test.ts', 'test/security/**/*.test.ts', 'test/browser/**/*.test.ts'];
const common = { testTimeout: 20_000, hookTimeout: 20_000, pool: 'forks' as const };

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
            'test/integration/audit-postgres.test.ts',
            'test/integration/counters-redis.test.ts',
            'test/integration/migrate-cli.test.ts',
            // About the SQLite engine itself (its WAL, its writer thread).
            'test/integration/audit-wal.test.ts',
            'test/integration/audit-writer.test.ts',
          ],
          env: { VALET_TEST_BACKENDS: 'shared' },
          setupFiles: ['test/helpers/shared-setup.ts'],
        },
      },
    ],
  },
});
