import { DIALECTS } from '../server/dialects.js';
import { LLM_FAMILIES } from '../llm/types.js';
/** JSON Schema for one YAML file in the configuration directory. Unknown keys are rejected. */

const name = { type: 'string', pattern: '^[a-z][a-z0-9_-]{0,62}$' } as const;
const secretName = { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]{0,127}$' } as const;
const headerName = { type: 'string', pattern: "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$" } as const;
const httpUrl = { type: 'string', pattern: '^https?://' } as const;
const positiveMs = { type: 'integer', minimum: 1, maximum: 3_600_000 } as const;

/** A header value as configured: printable ASCII; `{secret}` placeholders are parsed by the loader. */
const headerTemplate = { type: 'string', minLength: 1, pattern: '^[\\t\\x20-\\x7e]+$' } as const;

const credential = {
  type: 'object',
  required: ['scheme'],
  additionalProperties: false,
  properties: {
    scheme: { enum: ['bearer', 'header', 'basic', 'query', 'headers', 'aws_sigv4'] },
    secret: secretName,
    header: headerName,
    prefix: { type: 'string', pattern: '^[\\x20-\\x7e]*$' },
    value: headerTemplate,
    username: { type: 'string', pattern: '^[^:\\r\\n\\x00]*$' },
    param: { type: 'string', minLength: 1, pattern: '^[A-Za-z0-9._~-]+$' },
    headers: { type: 'object', minProperties: 1, propertyNames: headerName, additionalProperties: headerTemplate },
    // aws_sigv4: each request signed with AWS keys (names of secrets), for this service and region.
    service: { type: 'string', pattern: '^[a-z0-9][a-z0-9.-]{0,62}$' },
    region: { type: 'string', pattern: '^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$' },
    access_key_id: secretName,
    secret_access_key: secretName,
    session_token: secretName,
    unsigned_payload: { type: 'boolean' },
    assume_role: {
      type: 'object',
      required: ['role_arn'],
      additionalProperties: false,
      properties: {
        role_arn: { type: 'string', pattern: '^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$' },
        session_name: { type: 'string', pattern: '^[A-Za-z0-9+=,.@_-]{2,64}$' },
        external_id: { type: 'string', pattern: '^[A-Za-z0-9+=,.@:/_-]{2,1224}$' },
        duration_s: { type: 'integer', minimum: 900, maximum: 43_200 },
        sts_endpoint: { type: 'string', pattern: '^https?://' },
      },
    },
    // The value injected comes from a token endpoint instead of a stored secret.
    provider: {
      type: 'object',
      required: ['kind'],
      additionalProperties: false,
      properties: {
        kind: { enum: ['oauth2_client_credentials', 'oauth2_refresh_token', 'oauth2_jwt_bearer', 'github_app', 'oauth2_token_exchange', 'oauth2_user'] },
        token_url: httpUrl,
        authorize_url: httpUrl,
        authorize_params: { type: 'object', additionalProperties: { type: 'string' } },
        client_id: { type: 'string', minLength: 1, pattern: '^[\\x20-\\x7e]+$' },
        client_secret: secretName,
        client_private_key: secretName,
        client_key_id: { type: 'string', minLength: 1 },
        client_auth: { enum: ['basic', 'post', 'private_key_jwt', 'none'] },
        scopes: { type: 'array', uniqueItems: true, items: { type: 'string', pattern: '^[\\x21\\x23-\\x5b\\x5d-\\x7e]+$' } },
        resource: { type: 'string', minLength: 1 },
        audience: { type: 'string', minLength: 1 },
        refresh_token: secretName,
        private_key: secretName,
        issuer: { type: 'string', minLength: 1 },
        subject: { type: 'string', minLength: 1 },
        key_id: { type: 'string', minLength: 1 },
        algorithm: { enum: ['RS256', 'ES256'] },
        app_id: { type: ['string', 'integer'], pattern: '^[0-9A-Za-z._-]+$' },
        installation_id: { type: ['string', 'integer'], pattern: '^[0-9]+$' },
        api_url: httpUrl,
        requested_token_type: { type: 'string', pattern: '^urn:' },
      },
    },
  },
  // Every scheme but `headers` sends one secret, named by `secret` (or made by `provider`); `headers` names them in its values.
  if: { properties: { scheme: { enum: ['bearer', 'header', 'basic', 'query'] } }, not: { properties: { provider: { type: 'object' } }, required: ['provider'] } },
  then: { properties: { secret: secretName }, required: ['secret'] },
} as const;

const method = { enum: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] } as const;
const toolName = { type: 'string', pattern: '^[a-z][a-z0-9_-]*(\\.[a-z][a-z0-9_-]*)*$' } as const;
/** A tool a rule names: a declared one, or `<mcp upstream>.<tool>` with the MCP server's own name (any case, dots, dashes). */
const toolRef = { type: 'string', pattern: '^[a-z][a-z0-9_-]*\\.[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$' } as const;
const duration = { type: 'string', pattern: '^[1-9][0-9]*(ms|s|m|h|d)$' } as const;
/** Who approves and how long they have: a rule's `approval`, a response rule's, `gateway.llm.approval`. */
const approvalFields = { group: { type: 'string', minLength: 1 }, timeout: duration } as const;
/** A policy test's request. */
const testRequest = {
  type: 'object',
  required: ['upstream', 'method', 'path'],
  additionalProperties: false,
  properties: {
    upstream: name,
    method,
    path: { type: 'string', pattern: '^/' },
    query: { type: 'object', additionalProperties: { type: 'string' } },
    json: {},
    form: { type: 'string' },
    time: { type: 'string', pattern: '^\\d{4}-\\d{2}-\\d{2}T' },
    repeat: { type: 'integer', minimum: 1, maximum: 100000 },
  },
} as const;
/** `requires` / `blocked_by`: tools, each alone or with how recent the call must be and which arguments must be the same. */
const sequenceSteps = {
  type: 'array',
  minItems: 1,
  items: {
    oneOf: [
      toolRef,
      {
        type: 'object',
        required: ['tool'],
        additionalProperties: false,
        properties: {
          tool: toolRef,
          within: duration,
          same: { type: 'array', minItems: 1, uniqueItems: true, items: { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$' } },
        },
      },
    ],
  },
} as const;
const stringList = { type: 'array', minItems: 1, uniqueItems: true, items: { type: 'string', minLength: 1 } } as const;

/** Chat user id → the Valet identity (subject, approver groups, optional tenant) their decisions count as. */
const chatApprovers = {
  type: 'object',
  minProperties: 1,
  propertyNames: { pattern: '^[A-Za-z0-9_.:@-]{1,128}$' },
  additionalProperties: {
    type: 'object',
    required: ['subject', 'groups'],
    additionalProperties: false,
    properties: { subject: { type: 'string', minLength: 1, maxLength: 256 }, groups: stringList, tenant: { type: 'string', minLength: 1 } },
  },
} as const;

/** What a rule, rate limit or budget applies to; every key given must match. */
const match = {
  id: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$' },
  description: { type: 'string' },
  scope: {
    type: 'object',
    additionalProperties: false,
    minProperties: 1,
    properties: {
      tenant: { type: 'string', minLength: 1 },
      team: { type: 'string', minLength: 1 },
      agent: { type: 'string', minLength: 1 },
    },
  },
  upstream: name,
  tools: { type: 'array', minItems: 1, uniqueItems: true, items: toolRef },
  methods: { type: 'array', minItems: 1, uniqueItems: true, items: method },
  paths: { type: 'array', minItems: 1, items: { type: 'string', pattern: '^/' } },
  roles: stringList,
  environments: { type: 'array', minItems: 1, uniqueItems: true, items: { enum: ['development', 'staging', 'production'] } },
  when: { type: 'string', minLength: 1 },
} as const;

const counterKey = {
  oneOf: [
    { enum: ['agent', 'team', 'tenant', 'user', 'session', 'upstream', 'tool', 'global'] },
    { type: 'object', required: ['cel'], additionalProperties: false, properties: { cel: { type: 'string', minLength: 1 } } },
  ],
} as const;

export const fileSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    gateway: {
      type: 'object',
      additionalProperties: false,
      properties: {
        environment: { enum: ['development', 'staging', 'production'] },
        listen: {
          type: 'object',
          additionalProperties: false,
          properties: {
            host: { type: 'string', minLength: 1 },
            port: { type: 'integer', minimum: 0, maximum: 65535 },
          },
        },
        shutdown_grace_ms: positiveMs,
        max_retry_after_s: { type: 'integer', minimum: 1, maximum: 86_400 },
        max_header_bytes: { type: 'integer', minimum: 1024, maximum: 1_048_576 },
        max_body_bytes: { type: 'integer', minimum: 1024, maximum: 67_108_864 },
        max_stream_body_bytes: { type: 'integer', minimum: 1024, maximum: 1_099_511_627_776 },
        max_connections: { type: 'integer', minimum: 1, maximum: 1_000_000 },
        max_connections_per_client: { type: 'integer', minimum: 1, maximum: 1_000_000 },
        timeouts: {
          type: 'object',
          additionalProperties: false,
          properties: { headers: duration, body_idle: duration, body: duration },
        },
        timezone: { type: 'string', minLength: 1 },
        admin: {
          type: 'object',
          additionalProperties: false,
          properties: {
            listen: {
              type: 'object',
              additionalProperties: false,
              properties: {
                host: { type: 'string', minLength: 1 },
                port: { type: 'integer', minimum: 0, maximum: 65535 },
              },
            },
            audience: { type: 'string', minLength: 1 },
            public_url: { type: 'string', pattern: '^https?://[^/?#]+$' },
          },
        },
        approvals: {
          type: 'object',
          additionalProperties: false,
          properties: {
            backend: { enum: ['sqlite', 'postgres'] },
            postgres: {
              type: 'object',
              additionalProperties: false,
              properties: { url: { type: 'string', pattern: '^postgres(ql)?://' } },
            },
            max_pending_per_agent: { type: 'integer', minimum: 1, maximum: 100_000 },
            max_pending_per_tenant: { type: 'integer', minimum: 1, maximum: 1_000_000 },
            links: {
              type: 'object',
              additionalProperties: false,
              properties: {
                enabled: { type: 'boolean' },
                base_url: { type: 'string', pattern: '^https?://[^?#]+$' },
              },
            },
            channels: {
              type: 'array',
              items: {
                type: 'object',
                required: ['type'],
                additionalProperties: false,
                properties: {
                  type: { enum: ['webhook', 'slack'] },
                  url: { type: 'string', pattern: '^https?://' },
                  url_env: secretName,
                  secret_env: secretName,
                  groups: stringList,
                  signing_secret_env: secretName,
                  approvers: chatApprovers,
                  max_attempts: { type: 'integer', minimum: 1, maximum: 20 },
                  backoff: duration,
                },
              },
            },
            callback: {
              type: 'object',
              required: ['secret_env', 'approvers'],
              additionalProperties: false,
              properties: { secret_env: secretName, approvers: chatApprovers },
            },
          },
        },
        policy: {
          type: 'object',
          additionalProperties: false,
          properties: {
            require_registered_agents: { type: 'boolean' },
            // Call sequences: where a session's id comes from besides the token, and how long an idle one is remembered.
            sessions: {
              type: 'object',
              additionalProperties: false,
              properties: { header: headerName, ttl: duration },
            },
          },
        },
        secrets: {
          type: 'object',
          additionalProperties: false,
          properties: {
            backend: { enum: ['sqlite', 'postgres'] },
            postgres: {
              type: 'object',
              additionalProperties: false,
              properties: { url: { type: 'string', pattern: '^postgres(ql)?://' } },
            },
            sources: {
              type: 'array',
              minItems: 1,
              items: {
                oneOf: [
                  { enum: ['store', 'env'] },
                  { type: 'object', required: ['files'], additionalProperties: false, properties: { files: { type: 'string', minLength: 1 } } },
                ],
              },
            },
          },
        },
        llm: {
          type: 'object',
          additionalProperties: false,
          properties: {
            prices: {
              type: 'object',
              additionalProperties: {
                type: 'object',
                additionalProperties: false,
                minProperties: 1,
                properties: {
                  input: { type: 'number', minimum: 0 },
                  output: { type: 'number', minimum: 0 },
                  cached: { type: 'number', minimum: 0 },
                  cache_write: { type: 'number', minimum: 0 },
                  reasoning: { type: 'number', minimum: 0 },
                  max_output: { type: 'integer', minimum: 1 },
                },
              },
            },
            unknown_model: { enum: ['deny', 'escalate', 'ceiling'] },
            approval: {
              type: 'object',
              required: ['group'],
              additionalProperties: false,
              properties: { ...approvalFields, mode: { enum: ['hold', 'async'] } },
            },
            overrun: { enum: ['charge', 'cut'] },
            default_max_output: { type: 'integer', minimum: 1 },
            opaque_batch_cost: { type: 'number', exclusiveMinimum: 0 },
            max_body_bytes: { type: 'integer', minimum: 1024, maximum: 1_099_511_627_776 },
          },
        },
        counters: {
          type: 'object',
          additionalProperties: false,
          properties: {
            backend: { enum: ['sqlite', 'redis'] },
            fail_open: { type: 'boolean' },
            redis: {
              type: 'object',
              additionalProperties: false,
              properties: {
                url: { type: 'string', pattern: '^rediss?://' },
                // Braces would change the hash tag that keeps a decision's keys in one cluster slot.
                prefix: { type: 'string', minLength: 1, maxLength: 100, pattern: '^[^{}\\s]+$' },
              },
            },
          },
        },
        audit: {
          type: 'object',
          additionalProperties: false,
          properties: {
            fail_open: { type: 'boolean' },
            backend: { enum: ['sqlite', 'postgres'] },
            postgres: {
              type: 'object',
              additionalProperties: false,
              properties: {
                url: { type: 'string', pattern: '^postgres(ql)?://' },
                schema: { type: 'string', pattern: '^[a-z_][a-z0-9_]{0,62}$' },
                instance: { type: 'string', minLength: 1, maxLength: 200 },
              },
            },
            writer: { enum: ['auto', 'thread', 'inline'] },
            durability: { enum: ['strict', 'crash', 'async'] },
            busy_timeout_ms: { type: 'integer', minimum: 0, maximum: 60_000 },
            retention_days: { type: 'integer', minimum: 1, maximum: 36_500 },
            tenant_retention_days: {
              type: 'object',
              propertyNames: { minLength: 1 },
              additionalProperties: { oneOf: [{ type: 'integer', minimum: 1, maximum: 36_500 }, { type: 'null' }] },
            },
            anchor: {
              type: 'object',
              additionalProperties: false,
              properties: {
                interval_s: { type: 'integer', minimum: 1, maximum: 86_400 },
                command: { type: 'array', minItems: 1, items: { type: 'string', minLength: 1 } },
                url: { type: 'string', pattern: '^https?://' },
              },
            },
          },
        },
      },
    },
    issuers: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name', 'issuer', 'audience', 'algorithms'],
        additionalProperties: false,
        properties: {
          name,
          issuer: { type: 'string', minLength: 1 },
          audience: {
            oneOf: [
              { type: 'string', minLength: 1 },
              { type: 'array', minItems: 1, items: { type: 'string', minLength: 1 } },
            ],
          },
          algorithms: {
            type: 'array',
            minItems: 1,
            uniqueItems: true,
            items: {
              enum: ['HS256', 'HS384', 'HS512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'],
            },
          },
          clock_skew_s: { type: 'integer', minimum: 0, maximum: 60 },
          max_ttl: duration,
          secret: {
            type: 'object',
            required: ['env'],
            additionalProperties: false,
            properties: { env: secretName, generate: { type: 'boolean' } },
          },
          public_key_file: { type: 'string', minLength: 1 },
          jwks_file: { type: 'string', minLength: 1 },
          jwks_url: { type: 'string', pattern: '^https?://' },
          claims: {
            type: 'object',
            additionalProperties: false,
            properties: {
              tenant: { type: 'string', minLength: 1 },
              team: { type: 'string', minLength: 1 },
              roles: { type: 'string', minLength: 1 },
              environment: { type: 'string', minLength: 1 },
              user: { type: 'string', minLength: 1 },
              user_roles: { type: 'string', minLength: 1 },
              groups: { type: 'string', minLength: 1 },
            },
          },
        },
      },
    },
    upstreams: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name'],
        // A stdio MCP server is launched by Valet and has neither an origin nor a credential of its own.
        if: { properties: { stdio: { type: 'object' } }, required: ['stdio'] },
        then: {
          required: ['kind'],
          properties: { kind: { const: 'mcp' } },
          not: { anyOf: [{ properties: { origin: {} }, required: ['origin'] }, { properties: { credential: {} }, required: ['credential'] }] },
        },
        else: { properties: { origin: {}, credential: {} }, required: ['origin', 'credential'] },
        additionalProperties: false,
        properties: {
          name,
          origin: { type: 'string', pattern: '^https?://' },
          kind: { enum: ['http', 'mcp'] },
          // `openai-compatible`: OpenAI's shapes, but the body is never changed (no stream_options added).
          llm: { enum: [...LLM_FAMILIES, 'openai-compatible'] },
          // MCP: a local server Valet launches (one child per session) and serves over Streamable HTTP.
          stdio: {
            type: 'object',
            additionalProperties: false,
            required: ['command'],
            properties: {
              command: { type: 'string', minLength: 1 },
              args: { type: 'array', items: { type: 'string' } },
              // Variable name → the secret (store, environment, files) whose value it gets.
              env: { type: 'object', propertyNames: { pattern: '^[A-Za-z_][A-Za-z0-9_]*$' }, additionalProperties: secretName },
              cwd: { type: 'string', minLength: 1 },
            },
          },
          // MCP: the arguments of each tool the audit row keeps, by the server's tool name.
          audit_args: { type: 'object', additionalProperties: { type: 'array', uniqueItems: true, items: { type: 'string', minLength: 1 } } },
          dialect: { enum: [...DIALECTS] },
          listen: {
            type: 'object',
            additionalProperties: false,
            required: ['port'],
            properties: {
              host: { type: 'string', minLength: 1 },
              port: { type: 'integer', minimum: 0, maximum: 65535 },
            },
          },
          default_headers: {
            type: 'object',
            propertyNames: headerName,
            additionalProperties: { type: 'string', pattern: '^[\\x20-\\x7e]*$' },
          },
          hosts: {
            type: 'array',
            minItems: 1,
            uniqueItems: true,
            items: { type: 'string', minLength: 1, maxLength: 253, pattern: '^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$' },
          },
          agent_token: {
            type: 'object',
            additionalProperties: false,
            properties: {
              header: headerName,
              query: { type: 'string', minLength: 1, pattern: '^[A-Za-z0-9._~-]+$' },
              basic: { enum: ['password', 'username'] },
            },
          },
          credential,
          scrub_responses: { type: 'boolean' },
          allow_steering_headers: { type: 'array', uniqueItems: true, items: headerName },
          forward_headers: { type: 'array', minItems: 1, uniqueItems: true, items: headerName },
          timeouts: {
            type: 'object',
            additionalProperties: false,
            properties: { connect_ms: positiveMs, headers_ms: positiveMs, body_ms: positiveMs },
          },
          connections: { type: 'integer', minimum: 1, maximum: 4096 },
        },
      },
    },
    tools: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name', 'upstream', 'method', 'path'],
        additionalProperties: false,
        properties: {
          name: toolName,
          description: { type: 'string' },
          upstream: name,
          method,
          path: { type: 'string', pattern: '^/' },
          args: {
            type: 'object',
            propertyNames: { pattern: '^[A-Za-z_][A-Za-z0-9_]*$' },
            additionalProperties: { enum: ['string', 'int', 'number', 'bool'] },
          },
          audit_args: { type: 'array', uniqueItems: true, items: { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$' } },
        },
      },
    },
    rules: {
      type: 'array',
      items: {
        type: 'object',
        required: ['id', 'effect'],
        additionalProperties: false,
        properties: {
          ...match,
          effect: { enum: ['allow', 'deny', 'escalate'] },
          // shadow: evaluated and recorded beside the enforced rules, never enforced.
          mode: { enum: ['enforce', 'shadow'] },
          // Call sequences within the agent's session: a prior call this one needs, or one that rules it out.
          requires: sequenceSteps,
          blocked_by: sequenceSteps,
          reason: { type: 'string', minLength: 1 },
          approval: {
            type: 'object',
            required: ['group'],
            additionalProperties: false,
            properties: {
              ...approvalFields,
              mode: { enum: ['hold', 'async'] },
              redact: { type: 'array', minItems: 1, uniqueItems: true, items: { type: 'string', pattern: '^[^.\\s]+(\\.[^.\\s]+)*$' } },
            },
          },
        },
      },
    },
    response_rules: {
      type: 'array',
      items: {
        type: 'object',
        required: ['id', 'effect'],
        additionalProperties: false,
        properties: {
          ...match,
          effect: { enum: ['redact', 'block', 'escalate'] },
          status: { type: 'array', minItems: 1, uniqueItems: true, items: { type: 'string', pattern: '^[1-5](xx|[0-9]{2})$' } },
          reason: { type: 'string', minLength: 1 },
          redact: {
            type: 'object',
            additionalProperties: false,
            properties: {
              paths: { type: 'array', minItems: 1, uniqueItems: true, items: { type: 'string', minLength: 1 } },
              patterns: {
                type: 'array',
                minItems: 1,
                items: {
                  oneOf: [
                    { enum: ['card_number', 'email', 'iban', 'us_ssn', 'phone'] },
                    { type: 'object', required: ['regex'], additionalProperties: false, properties: { regex: { type: 'string', minLength: 1 } } },
                  ],
                },
              },
              keep: { type: 'string', minLength: 1 },
            },
          },
          approval: {
            type: 'object',
            required: ['group'],
            additionalProperties: false,
            properties: approvalFields,
          },
        },
      },
    },
    rate_limits: {
      type: 'array',
      items: {
        type: 'object',
        required: ['id', 'limit', 'window'],
        additionalProperties: false,
        properties: { ...match, limit: { type: 'integer', minimum: 1 }, window: duration, key: counterKey, fail_open: { type: 'boolean' } },
      },
    },
    budgets: {
      type: 'array',
      items: {
        type: 'object',
        required: ['id', 'limit', 'window'],
        // An amount from the request (sum), or what LLM calls use (usage): exactly one.
        oneOf: [
          { required: ['sum'], properties: { sum: {} } },
          { required: ['usage'], properties: { usage: {} } },
        ],
        additionalProperties: false,
        properties: {
          ...match,
          sum: { type: 'string', minLength: 1 },
          usage: { enum: ['tokens', 'cost'] },
          limit: { type: 'number', exclusiveMinimum: 0 },
          window: duration,
          key: counterKey,
          fail_open: { type: 'boolean' },
        },
      },
    },
    agents: {
      type: 'array',
      items: {
        type: 'object',
        required: ['id'],
        additionalProperties: false,
        properties: {
          id: { type: 'string', minLength: 1 },
          tenant: { type: 'string', minLength: 1 },
          team: { type: 'string', minLength: 1 },
          description: { type: 'string' },
        },
      },
    },
    contexts: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name', 'key'],
        additionalProperties: false,
        properties: {
          name: { type: 'string', pattern: '^[a-z][a-z0-9_]{0,62}$' },
          description: { type: 'string' },
          key: { type: 'string', minLength: 1 },
          upstream: name,
          tools: { type: 'array', minItems: 1, uniqueItems: true, items: toolRef },
          file: { type: 'string', minLength: 1 },
          url: { type: 'string', pattern: '^https?://[^{}]*(\\{key\\}[^{}]*)?$' },
          cache_ttl: duration,
          timeout: duration,
        },
      },
    },
    tests: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name', 'identity', 'request', 'expect'],
        additionalProperties: false,
        properties: {
          name: { type: 'string', minLength: 1 },
          identity: {
            type: 'object',
            required: ['agent'],
            additionalProperties: false,
            properties: {
              agent: { type: 'string', minLength: 1 },
              tenant: { type: 'string' },
              team: { type: 'string' },
              roles: { type: 'array', items: { type: 'string' } },
              env: { type: 'string' },
              user: { type: 'string' },
              user_roles: { type: 'array', items: { type: 'string' } },
            },
          },
          request: testRequest,
          // Calls made earlier in the same session (each decided, and recorded if allowed, as if answered 2xx).
          before: { type: 'array', minItems: 1, items: testRequest },
          expect: {
            type: 'object',
            required: ['effect'],
            additionalProperties: false,
            properties: {
              effect: { enum: ['allow', 'deny', 'escalate', 'rate_limited'] },
              rule: { type: 'string' },
            },
          },
        },
      },
    },
  },
} as const;

