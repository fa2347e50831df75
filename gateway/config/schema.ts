/** JSON Schema for one YAML file in the configuration directory. Unknown keys are rejected. */

const name = { type: 'string', pattern: '^[a-z][a-z0-9_-]{0,62}$' } as const;
const secretName = { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]{0,127}$' } as const;
const headerName = { type: 'string', pattern: "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$" } as const;
const positiveMs = { type: 'integer', minimum: 1, maximum: 3_600_000 } as const;

const credential = {
  type: 'object',
  required: ['scheme', 'secret'],
  additionalProperties: false,
  properties: {
    scheme: { enum: ['bearer', 'header', 'basic', 'query'] },
    secret: secretName,
    header: headerName,
    prefix: { type: 'string', pattern: '^[\\x20-\\x7e]*$' },
    username: { type: 'string', pattern: '^[^:\\r\\n\\x00]*$' },
    param: { type: 'string', minLength: 1, pattern: '^[A-Za-z0-9._~-]+$' },
  },
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
        max_header_bytes: { type: 'integer', minimum: 1024, maximum: 1_048_576 },
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
            },
          },
        },
      },
    },
    upstreams: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name', 'origin', 'credential'],
        additionalProperties: false,
        properties: {
          name,
          origin: { type: 'string', pattern: '^https?://' },
          agent_token: {
            type: 'object',
            additionalProperties: false,
            properties: {
              header: headerName,
              query: { type: 'string', minLength: 1, pattern: '^[A-Za-z0-9._~-]+$' },
            },
          },
          credential,
          timeouts: {
            type: 'object',
            additionalProperties: false,
            properties: { connect_ms: positiveMs, headers_ms: positiveMs, body_ms: positiveMs },
          },
          connections: { type: 'integer', minimum: 1, maximum: 4096 },
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
          id: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$' },
          description: { type: 'string' },
          upstream: name,
          methods: {
            type: 'array',
            minItems: 1,
            uniqueItems: true,
            items: { enum: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] },
          },
          paths: { type: 'array', minItems: 1, items: { type: 'string', pattern: '^/' } },
          effect: { enum: ['allow', 'deny'] },
          reason: { type: 'string', minLength: 1 },
        },
      },
    },
  },
} as const;
