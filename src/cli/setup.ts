import type { Command } from 'commander';
import { KilnError } from '../core/errors.ts';
import { RUNTIME_PREREQS, TEST_PREREQS } from '../core/prereqs.ts';
import { capture, runInherit, which } from './exec.ts';
import type { Output } from './output.ts';

export function registerSetup(program: Command, out: () => Output): void {
  program
    .command('setup')
    .description("install the Debian packages kiln needs (QEMU, image tools, registry); prints the list first")
    .option('--with-test-deps', 'also install what the test suite needs (skopeo, buildah, PostgreSQL, Chromium)')
    .option('--dry-run', 'only print what would be installed')
    .action(async (opts: { withTestDeps?: boolean; dryRun?: boolean }) => {
      const o = out();
      const wanted = [...RUNTIME_PREREQS, ...(opts.withTestDeps ? TEST_PREREQS : [])];
      const missing = wanted.filter((p) => !which(p.command, `${process.env.PATH}:/usr/sbin:/sbin`));
      o.info(`kiln needs these Debian packages:`);
      for (const p of wanted) o.info(`  ${p.pkg.padEnd(18)} ${p.why}${missing.includes(p) ? '  (missing)' : ''}`);
      const foreign = capture('dpkg', ['--print-foreign-architectures']).split('\n');
      const needArm64Apt = !foreign.includes('arm64');
      if (missing.length === 0 && !needArm64Apt) {
        o.info('everything is installed');
        return;
      }
      if (opts.dryRun) return;
      if (process.getuid?.() !== 0) {
        throw new KilnError('setup.not_root', 'installing Debian packages needs root', {
          hint: `run \`sudo kiln setup\`, or: sudo apt-get install -y ${missing.map((p) => p.pkg).join(' ')}`,
        });
      }
      if (needArm64Apt) {
        // arm64 guest kernels and busybox are fetched with `apt-get download pkg:arm64`.
        o.info('enabling the arm64 package architecture for guest image downloads (dpkg --add-architecture arm64)');
        await mustRun('dpkg', ['--add-architecture', 'arm64']);
      }
      o.info('apt-get update');
      await mustRun('apt-get', ['update', '-q']);
      if (missing.length > 0) {
        o.info(`apt-get install ${missing.map((p) => p.pkg).join(' ')}`);
        await mustRun('apt-get', ['install', '-y', '-q', '--no-install-recommends', ...missing.map((p) => p.pkg)]);
      }
      o.info('done');
    });
}

async function mustRun(cmd: string, args: string[]): Promise<void> {
  const code = await runInherit(cmd, args, { ...process.env, DEBIAN_FRONTEND: 'noninteractive' });
  if (code !== 0) {
    throw new KilnError('setup.command_failed', `\`${cmd} ${args.join(' ')}\` exited with ${code}`, {
      hint: 'read the output above; check that the machine can reach its Debian mirror',
    });
  }
}
