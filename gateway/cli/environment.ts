import type { Environment } from '../config/types.js';
import { UsageError } from './usage.js';

/**
 * The gateway environment a command runs under: the `--env` flag, else `VALET_ENV`, else
 * undefined (then `gateway.environment` decides). `valet start` and the policy tools share it, so
 * a policy checked or tested in CI is evaluated under the environment the gateway will use.
 */
export function gatewayEnvironment(flag: string | undefined, env: NodeJS.ProcessEnv, flagName = '--env'): Environment | undefined {
  const fromFlag = flag !== undefined;
  const value = fromFlag ? flag : env['VALET_ENV'];
  if (value === undefined || (!fromFlag && value === '')) return undefined;
  if (value !== 'development' && value !== 'staging' && value !== 'production') {
    throw new UsageError(`${fromFlag ? flagName : 'VALET_ENV'} must be development, staging or production`);
  }
  return value;
}
