import { defineConfig } from 'vitest/config';

// `npm run record-histories`: not part of `npm test`; it writes fixtures for test/workflows/replay.test.ts.
export default defineConfig({
  test: {
    include: ['test/record/*.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    setupFiles: ['test/helpers/quiet-runtime.ts'],
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 180_000,
  },
});
