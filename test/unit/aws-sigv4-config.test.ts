/**
 * `credential.scheme: aws_sigv4` as configured: what it loads to, the secrets it names, and every
 * mistake reported by the loader with file, line and column.
 */
import { describe, expect, it } from 'vitest';
import { secretNames } from '../../gateway/config/credential.js';
import type { UpstreamConfig } from '../../gateway/config/types.js';
import type { ConfigProblem } from '../../gateway/errors.js';
import { upstreamConfigs } from '../helpers/upstream-config.js';

const configs = upstreamConfigs();
const yamlOf = (credential: string, origin = 'https://s3.us-east-1.amazonaws.com'): string => `upstreams:\n  - name: aws\n    origin: ${origin}\n    credential: ${credential}\n`;
const load = (credential: string, origin?: string): UpstreamConfig => configs.load(yamlOf(credential, origin), 'aws');
const problems = (credential: string, origin?: string): ConfigProblem[] => configs.problems(yamlOf(credential, origin));

const KEYS = 'access_key_id: AWS_ACCESS_KEY_ID, secret_access_key: AWS_SECRET_ACCESS_KEY';

describe('aws_sigv4: what it loads to', () => {
  it('S3: keys by secret name, UNSIGNED-PAYLOAD for streamed bodies by default', () => {
    const u = load(`{ scheme: aws_sigv4, service: s3, region: us-east-1, ${KEYS} }`);
    expect(u.credential).toEqual({
      scheme: 'aws_sigv4',
      service: 's3',
      region: 'us-east-1',
      accessKeyId: 'AWS_ACCESS_KEY_ID',
      secretAccessKey: 'AWS_SECRET_ACCESS_KEY',
      sessionToken: undefined,
      assumeRole: undefined,
      unsignedPayload: true,
    });
    expect(secretNames(u.credential)).toEqual(['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY']);
  });

  it('another service hashes bodies by default; a session token and an assumed role', () => {
    const u = load(
      `{ scheme: aws_sigv4, service: bedrock, region: eu-west-1, ${KEYS}, session_token: AWS_SESSION_TOKEN, assume_role: { role_arn: "arn:aws:iam::123456789012:role/agents/bedrock", external_id: ext-42, duration_s: 900 } }`,
      'https://bedrock-runtime.eu-west-1.amazonaws.com',
    );
    expect(u.credential).toMatchObject({
      unsignedPayload: false,
      sessionToken: 'AWS_SESSION_TOKEN',
      assumeRole: { roleArn: 'arn:aws:iam::123456789012:role/agents/bedrock', sessionName: 'valet', externalId: 'ext-42', durationS: 900, stsEndpoint: 'https://sts.eu-west-1.amazonaws.com' },
    });
    expect(secretNames(u.credential)).toEqual(['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN']);
    const local = load(`{ scheme: aws_sigv4, service: s3, region: us-east-1, ${KEYS}, unsigned_payload: false, assume_role: { role_arn: "arn:aws:iam::123456789012:role/r", session_name: agents, sts_endpoint: "http://127.0.0.1:4566/" } }`, 'http://127.0.0.1:4566');
    expect(local.credential).toMatchObject({ unsignedPayload: false, assumeRole: { sessionName: 'agents', stsEndpoint: 'http://127.0.0.1:4566' } });
  });
});

describe('aws_sigv4: mistakes are reported with file, line and column', () => {
  const cases: [string, string, Partial<ConfigProblem>, string?][] = [
    ['no region', `{ scheme: aws_sigv4, service: s3, ${KEYS} }`, { path: 'upstreams[0].credential', message: 'scheme "aws_sigv4" needs "region"' }],
    ['no service', `{ scheme: aws_sigv4, region: us-east-1, ${KEYS} }`, { path: 'upstreams[0].credential', message: 'scheme "aws_sigv4" needs "service"' }],
    ['no access key id', '{ scheme: aws_sigv4, service: s3, region: us-east-1, secret_access_key: S }', { path: 'upstreams[0].credential', message: 'scheme "aws_sigv4" needs "access_key_id"' }],
    ['no secret access key', '{ scheme: aws_sigv4, service: s3, region: us-east-1, access_key_id: A }', { path: 'upstreams[0].credential', message: 'scheme "aws_sigv4" needs "secret_access_key"' }],
    ['an unknown key', `{ scheme: aws_sigv4, service: s3, region: us-east-1, ${KEYS}, regoin: us-east-1 }`, { path: 'upstreams[0].credential.regoin', message: 'unknown key' }],
    ['a "secret" beside the keys', `{ scheme: aws_sigv4, service: s3, region: us-east-1, ${KEYS}, secret: K }`, { path: 'upstreams[0].credential.secret', message: expect.stringContaining('not used by scheme "aws_sigv4"') }],
    ['AWS keys under another scheme', '{ scheme: bearer, secret: K, region: us-east-1 }', { path: 'upstreams[0].credential.region', message: 'not used by scheme "bearer"' }],
    ['a key name that is not a secret name', '{ scheme: aws_sigv4, service: s3, region: us-east-1, access_key_id: "AKIA/REAL", secret_access_key: S }', { path: 'upstreams[0].credential.access_key_id' }],
    ['a region that is not one', `{ scheme: aws_sigv4, service: s3, region: US-EAST, ${KEYS} }`, { path: 'upstreams[0].credential.region' }],
    ['a region other than the host\'s', `{ scheme: aws_sigv4, service: s3, region: eu-west-1, ${KEYS} }`, { path: 'upstreams[0].credential.region', message: '"eu-west-1" is not the region of s3.us-east-1.amazonaws.com (us-east-1)' }],
    ['an unknown assume_role key', `{ scheme: aws_sigv4, service: s3, region: us-east-1, ${KEYS}, assume_role: { role_arn: "arn:aws:iam::123456789012:role/r", role: x } }`, { path: 'upstreams[0].credential.assume_role.role', message: 'unknown key' }],
    ['assume_role without role_arn', `{ scheme: aws_sigv4, service: s3, region: us-east-1, ${KEYS}, assume_role: { session_name: valet } }`, { path: 'upstreams[0].credential.assume_role', message: 'missing required key "role_arn"' }],
    ['a role ARN that is not one', `{ scheme: aws_sigv4, service: s3, region: us-east-1, ${KEYS}, assume_role: { role_arn: "arn:aws:iam::1234:user/bob" } }`, { path: 'upstreams[0].credential.assume_role.role_arn' }],
    ['a duration STS refuses', `{ scheme: aws_sigv4, service: s3, region: us-east-1, ${KEYS}, assume_role: { role_arn: "arn:aws:iam::123456789012:role/r", duration_s: 60 } }`, { path: 'upstreams[0].credential.assume_role.duration_s' }],
    ['an STS endpoint with a path', `{ scheme: aws_sigv4, service: s3, region: us-east-1, ${KEYS}, assume_role: { role_arn: "arn:aws:iam::123456789012:role/r", sts_endpoint: "https://sts.example/x?y" } }`, { path: 'upstreams[0].credential.assume_role.sts_endpoint', message: 'must be scheme://host[:port] only (no path, query, fragment or credentials)' }],
  ];
  it.each(cases)('%s', (_name, credential, expected) => {
    const list = problems(credential);
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({ line: 4, ...expected });
  });
});
