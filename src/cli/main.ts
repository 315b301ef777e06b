/** The kiln CLI: one binary, subcommands wired here. */
import { Command, CommanderError } from 'commander';
import { isKilnError } from '../core/errors.ts';
import { makeOutput, printError, type Output } from './output.ts';
import { registerImage } from './image.ts';
import { registerRun } from './run.ts';
import { registerManifest } from './manifest.ts';
import { registerSetup } from './setup.ts';
import { registerServer } from './server.ts';
import { registerAgent } from './agent.ts';
import { registerUp } from './up.ts';
import { registerJobs } from './jobs.ts';
import { registerHosts } from './hosts.ts';
import { registerTokens } from './tokens.ts';

const program = new Command();
let output: Output | undefined;
const out = (): Output => (output ??= makeOutput({ quiet: program.opts<{ quiet?: boolean }>().quiet }));

program
  .name('kiln')
  .description('Run CI jobs in fresh, single-use microVMs on hardware you own.')
  .option('-q, --quiet', "don't print kiln's own progress lines")
  .showHelpAfterError()
  .exitOverride();

registerSetup(program, out);
registerManifest(program, out);
registerRun(program, out);
registerImage(program, out);
registerServer(program, out);
registerAgent(program, out);
registerUp(program, out);
registerJobs(program, out);
registerHosts(program, out);
registerTokens(program, out);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) {
    process.exitCode = e.exitCode === 0 ? 0 : 2;
  } else {
    printError(e);
    process.exitCode = isKilnError(e) && typeof e.details?.exitCode === 'number' ? e.details.exitCode : 1;
  }
}
