import type { CredentialConfig, RuleConfig, UpstreamConfig } from '../../gateway/config/types.js';
import type { AgentIdentity } from '../../gateway/types.js';

/** Shared fixtures for unit tests that build configuration and identities by hand. */

/** An agent with no tenant, team, roles or user. */
export const agent: AgentIdentity = {
  agent: 'agent-1',
  tenant: undefined,
  team: undefined,
  roles: [],
  environment: undefined,
  user: undefined,
  userRoles: [],
  issuer: 'test',
  tokenId: undefined,
  expiresAt: 0,
};

/** A rule with every optional field unset, plus what the test gives. */
export function rule(r: Partial<RuleConfig> & Pick<RuleConfig, 'id' | 'effect'>): RuleConfig {
  return {
    description: undefined,
    scope: undefined,
    upstream: undefined,
    tools: undefined,
    methods: undefined,
    paths: undefined,
    roles: undefined,
    environments: undefined,
    when: undefined,
    reason: undefined,
    approval: undefined,
    at: { file: 'test.yaml', line: 1, column: 1, path: 'rules[0]' },
    lines: {},
    ...r,
  };
}

/** An upstream at https://api.example.com with the given credential. */
export function upstream(credential: CredentialConfig, o: Partial<UpstreamConfig> = {}): UpstreamConfig {
  return {
    name: 'api',
    origin: 'https://api.example.com',
    agentTokenHeader: 'authorization',
    agentTokenQuery: undefined,
    dialect: 'generic',
    listen: undefined,
    hosts: [],
    credential,
    timeouts: { connectMs: 1000, headersMs: 1000, bodyMs: 1000 },
    connections: 1,
    ...o,
  };
}
