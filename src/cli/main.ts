/** The kiln CLI: one binary, subcommands wired here. */
import { Command, CommanderError } from 'commander';
import { isKilnError } from '../core/errors.ts';
import { KILN_VERSION } from '../core/version.ts';
import { makeOutput, printError, type Output } from './output.ts';

const program = new Command();
let output: Output | undefined;
const out = (): Output => (output ??= makeOutput({ quiet: program.opts<{ quiet?: boolean }>().quiet }));

program
  .name('kiln')
  .description('Run CI jobs in fresh, single-use microVMs on hardware you own.')
  .option('-q, --quiet', "don't print kiln's own progress lines")
  .showHelpAfterError()
  .exitOverride();

/**
 * Each command's module (and its dependencies: the server pulls in Fastify and PGlite) loads only when
 * that command runs, so `kiln run` starts in a fraction of the time. `kiln --help` loads them all.
 */
type Register = (program: Command, out: () => Output) => void;
// To add a command: one line here (name as typed, and the module's register function).
const COMMANDS: { name: string; load: () => Promise<Register> }[] = [
  { name: 'setup', load: async () => (await import('./setup.ts')).registerSetup },
  { name: 'run', load: async () => (await import('./run.ts')).registerRun },
  { name: 'image', load: async () => (await import('./image.ts')).registerImage },
  { name: 'snapshots', load: async () => (await import('./snapshots.ts')).registerSnapshots },
  { name: 'caches', load: async () => (await import('./caches.ts')).registerCaches },
  { name: 'up', load: async () => (await import('./up.ts')).registerUp },
  { name: 'server', load: async () => (await import('./server.ts')).registerServer },
  { name: 'agent', load: async () => (await import('./agent.ts')).registerAgent },
  { name: 'jobs', load: async () => (await import('./jobs.ts')).registerJobs },
  { name: 'hosts', load: async () => (await import('./hosts.ts')).registerHosts },
  { name: 'tokens', load: async () => (await import('./tokens.ts')).registerTokens },
  { name: 'tenants', load: async () => (await import('./tenants.ts')).registerTenants },
  { name: 'egress', load: async () => (await import('./egress.ts')).registerEgress },
  { name: 'manifest', load: async () => (await import('./manifest.ts')).registerManifest },
  { name: 'github', load: async () => (await import('./github.ts')).registerGitHub },
];

// `kiln --version` (or -V) only as the first argument: as a commander option it would also be taken after a
// subcommand, so `kiln run python -V` would print kiln's version and run nothing.
const VERSION_FLAGS = ['--version', '-V'];
program.addHelpText('after', `\nkiln --version (-V) prints kiln's version (${KILN_VERSION}).`);

try {
  if (VERSION_FLAGS.includes(process.argv[2] ?? '')) {
    process.stdout.write(`${KILN_VERSION}\n`);
  } else {
    const wanted = COMMANDS.filter((c) => process.argv.slice(2).find((a) => !a.startsWith('-')) === c.name);
    for (const c of wanted.length > 0 ? wanted : COMMANDS) (await c.load())(program, out);
    await program.parseAsync(process.argv);
  }
} catch (e) {
  if (e instanceof CommanderError) {
    process.exitCode = e.exitCode === 0 ? 0 : 2;
  } else {
    printError(e);
    process.exitCode = isKilnError(e) && typeof e.details?.exitCode === 'number' ? e.details.exitCode : 1;
  }
}
