import tseslint from 'typescript-eslint';

// Import boundaries (DESIGN.md, docs/ARCHITECTURE.md): core <- everything; vm <- agent; store <- server;
// oci <- cli and agent; proc (running an operator's shell command) <- agent and server; cli wires. The server
// and the agent share only core and proc.
const ban = (from, what, except = []) => ({
  // With exceptions the folder itself is not banned (gitignore semantics: a file in an excluded folder cannot
  // be re-included).
  group: [`**/${what}/*`, ...(except.length ? except.map((e) => `!**/${what}/${e}`) : [`**/${what}`])],
  message: `src/${from} must not import ${what} (see docs/ARCHITECTURE.md)`,
});
const rule = (from, banned) => ['error', { patterns: banned.map((b) => (typeof b === 'string' ? ban(from, b) : ban(from, ...b))) }];
const boundary = (from, banned) => ({ files: [`src/${from}/**/*.ts`], rules: { 'no-restricted-imports': rule(from, banned) } });

// Inside src/server, by role (a later block replaces the rule for its files, so each repeats the server's own
// bans): the scheduler places through a port (scheduler/host-pool.ts) and imports nothing of the agents, the
// HTTP routes or GitHub; the agents' side (gateway, host registry, writers) may use the placement types and
// the HTTP error table, not the routes or GitHub; the routes may read the host registry, not GitHub; GitHub
// reaches the rest only through the server context. The job door (jobs/) is below them all: every part may
// use it, and it imports none of them. Only server.ts wires, and nothing imports it.
const SERVER = ['agent', 'vm', 'cli'];
const WIRING = { group: ['**/server.ts'], message: 'only src/server/server.ts wires the server; depend on the context or a port instead' };
const serverPart = (part, banned) => ({
  files: [`src/server/${part}/**/*.ts`],
  rules: { 'no-restricted-imports': ['error', { patterns: [...rule(`server/${part}`, [...SERVER, ...banned])[1].patterns, WIRING] }] },
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
  boundary('core', ['store', 'vm', 'image', 'agent', 'server', 'oci', 'cli', 'proc']),
  boundary('proc', ['store', 'vm', 'image', 'agent', 'server', 'oci', 'cli', 'dashboard']),
  boundary('vm', ['store', 'agent', 'server', 'oci', 'cli']),
  boundary('image', ['store', 'agent', 'server', 'cli']),
  boundary('oci', ['store', 'vm', 'agent', 'server', 'cli']),
  boundary('store', ['vm', 'agent', 'server', 'oci', 'cli']),
  boundary('agent', ['server', 'store', 'cli']),
  boundary('server', SERVER),
  serverPart('jobs', ['agents', 'http', 'github', 'scheduler']),
  serverPart('scheduler', ['agents', 'http', 'github']),
  serverPart('agents', ['github', ['http', ['http-errors.ts']]]),
  serverPart('http', ['github', 'scheduler']),
  serverPart('github', ['agents', 'scheduler']),
  // Host power reaches the agents only through the scheduler's HostPool port; it uses the placement and the route table.
  serverPart('power', ['agents', 'github']),
  // Reports (figures, report routes) and the dashboard's server side (assets, live feed) use the route
  // table's types and the store, never the agents' side, the scheduler or GitHub internals.
  serverPart('reports', ['agents', 'scheduler', 'github']),
  serverPart('dashboard', ['agents', 'scheduler', 'github', 'store']),
  // The dashboard's browser code (src/dashboard) talks to the server over HTTP only; it may use core's pure
  // functions and nothing that does I/O on the server side.
  boundary('dashboard', ['store', 'vm', 'image', 'agent', 'server', 'oci', 'cli', 'proc']),
  { files: ['src/cli/**/*.ts', 'test/**/*.ts', 'bench/**/*.ts', 'scripts/**'], rules: { 'no-console': 'off' } },
);
