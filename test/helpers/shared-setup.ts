import { afterAll } from 'vitest';
import { dropDeployments } from './backends.js';

// The shared-backends project (vitest.config.ts): each test file's schemas and Redis keys go with it.
afterAll(dropDeployments);
