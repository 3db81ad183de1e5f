// Run by `npm run lint` (and so by `npm test` and CI): `npx depcruise src bench test scripts`.
// An import cycle, counting type-only imports (`import type`), is an error: a cycle ties layers that must not know
// each other (the workflows' messages, the activities, the client, the metrics) and makes one module of it load
// another half-initialised. ESLint's import/no-cycle cannot hold this line: it skips type-only imports.
/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment:
        'Import cycle. Move the shared types or constants to a leaf module both sides import (see README, Development).',
      from: {},
      to: { circular: true },
    },
    {
      name: 'workflows-through-their-messages',
      severity: 'error',
      comment:
        'Outside the workflows and the worker, code talks to a workflow through src/workflows/messages.ts and ' +
        'search-attributes.ts; a workflow function is started by its name with `import type` for its signature.',
      from: { path: '^src/', pathNot: '^src/(workflows/|worker\\.ts$)' },
      to: {
        path: '^src/workflows/',
        pathNot: '^src/workflows/(messages|search-attributes)\\.ts$',
        dependencyTypesNot: ['type-only'],
      },
    },
    {
      name: 'messages-are-plain-definitions',
      severity: 'error',
      comment:
        'src/workflows/messages.ts defines the signals, queries and updates and the data they carry: it imports no ' +
        'workflow and no activity (their types live in src/rotation/).',
      from: { path: '^src/workflows/messages\\.ts$' },
      to: { path: '^src/(workflows|activities)/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|node_modules|coverage)/' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { extensions: ['.ts', '.mts', '.js', '.mjs', '.json'] },
  },
};
