import tseslint from 'typescript-eslint';

// Import boundaries (DESIGN.md): core <- everything; vm <- agent; store <- server; oci <- cli and agent;
// cli wires. The server and the agent share only core.
const boundary = (from, banned) => ({
  files: [`src/${from}/**/*.ts`],
  rules: {
    'no-restricted-imports': [
      'error',
      { patterns: banned.map((b) => ({ group: [`**/${b}/*`, `**/${b}`], message: `src/${from} must not import src/${b} (see DESIGN.md)` })) },
    ],
  },
});

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**'] },
  {
    files: ['**/*.ts'],
    extends: [tseslint.configs.base],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': [
        'error',
        { allowForKnownSafeCalls: [{ from: 'package', package: 'node:test', name: ['test', 'it', 'describe', 'suite', 'before', 'after', 'beforeEach', 'afterEach'] }] },
      ],
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: false }],
      '@typescript-eslint/await-thenable': 'error',
      'no-console': 'error',
    },
  },
  boundary('core', ['store', 'vm', 'image', 'agent', 'server', 'oci', 'cli']),
  boundary('vm', ['store', 'agent', 'server', 'oci', 'cli']),
  boundary('image', ['store', 'agent', 'server', 'cli']),
  boundary('oci', ['store', 'vm', 'agent', 'server', 'cli']),
  boundary('store', ['vm', 'agent', 'server', 'oci', 'cli']),
  boundary('agent', ['server', 'store', 'cli']),
  boundary('server', ['agent', 'vm', 'cli']),
  // The dashboard's browser code (src/dashboard) talks to the server over HTTP only; it may use core's pure
  // functions and nothing that does I/O on the server side.
  boundary('dashboard', ['store', 'vm', 'image', 'agent', 'server', 'oci', 'cli']),
  { files: ['src/cli/**/*.ts', 'test/**/*.ts', 'bench/**/*.ts', 'scripts/**'], rules: { 'no-console': 'off' } },
);
