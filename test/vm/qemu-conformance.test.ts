import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after } from 'node:test';
import { makeImageStore } from '../../src/image/store.ts';
import { makeQemuDriver } from '../../src/vm/qemu-driver.ts';
import { assertNoLeaks, ensureImage, makeTestDataDir, SHARED_DIR } from '../support/kiln.ts';
import { runVmDriverConformance, shellCommands } from '../support/vm-conformance.ts';

const data = makeTestDataDir();
const manifest = ensureImage('amd64');
const store = makeImageStore(SHARED_DIR);
after(() => data.cleanup());

runVmDriverConformance({
  name: 'qemu (amd64)',
  arch: 'amd64',
  driver: () => makeQemuDriver({ dataDir: data.dir }),
  image: () => store.toRef(manifest),
  corruptImage: () => {
    const dir = join(data.dir, 'corrupt');
    mkdirSync(dir, { recursive: true });
    const ref = store.toRef(manifest);
    copyFileSync(ref.initrdPath, join(dir, 'initrd.cpio'));
    writeFileSync(join(dir, 'initrd.cpio'), Buffer.from('flipped'), { flag: 'r+' });
    return { ...ref, initrdPath: join(dir, 'initrd.cpio') };
  },
  commands: shellCommands,
  assertClean: () => assertNoLeaks(data.dir),
  jobTimeoutMs: 120_000,
});
