/**
 * The guest egress filter's cost: a guest downloads a 24 MiB file over QEMU user networking from a server in
 * a network namespace this benchmark creates, with the egress filter (an allowlisted private address, so
 * every packet goes through the VM's nftables chain) and without it (KILN_EGRESS=unfiltered), alternating VMs.
 * Prints the median MB/s of each and the ratio filtered / unfiltered (target >= 0.8).
 * Needs root (nftables, a network namespace). Run: npm run bench:egress
 */
import { randomBytes } from 'node:crypto';
import { cpus } from 'node:os';
import { makeImageStore } from '../src/image/store.ts';
import { makeQemuDriver } from '../src/vm/qemu-driver.ts';
import { ensureImage, makeTestDataDir, SHARED_DIR } from '../test/support/kiln.ts';
import { startTestNetns } from '../test/support/netns.ts';

const SERVER = '10.213.9.2';
const MiB = 1024 * 1024;
const SIZE = 24 * MiB;
const ROUNDS = Number(process.env.ROUNDS ?? 2);
const PER_VM = 3;

const data = makeTestDataDir();
const net = await startTestNetns('10.213.9', [], { [SERVER]: randomBytes(SIZE) });
const ref = makeImageStore(SHARED_DIR).toRef(ensureImage('amd64'));

/** One VM, PER_VM downloads; the guest times each with its own clock (/proc/uptime, 10 ms steps). */
async function downloads(filtered: boolean): Promise<number[]> {
  const driver = makeQemuDriver({ dataDir: data.dir, egress: filtered ? { allow: [`${SERVER}/32`] } : { unfiltered: true } });
  const script = `for i in $(seq ${PER_VM}); do a=$(cut -d' ' -f1 /proc/uptime); wget -q -O /dev/null http://${SERVER}/ || exit 3; b=$(cut -d' ' -f1 /proc/uptime); echo "$a $b"; done`;
  let out = '';
  const vm = await driver.start(
    {
      id: `bench-eg-${randomBytes(3).toString('hex')}`,
      arch: 'amd64',
      cpus: 1,
      memoryBytes: 256 * MiB,
      diskBytes: 64 * MiB,
      image: ref,
      job: { command: ['sh', '-c', script], env: {} },
      timeoutMs: 600_000,
      network: 'user',
    },
    { stdout: (b) => (out += b.toString()), stderr: (b) => process.stderr.write(b) },
  );
  const r = await vm.done;
  if (r.outcome !== 'exited' || r.exitCode !== 0) throw new Error(`the benchmark VM did not finish: ${JSON.stringify(r)}`);
  return out
    .trim()
    .split('\n')
    .map((l) => l.split(' ').map(Number))
    .map(([a, b]) => SIZE / MiB / Math.max(0.01, b! - a!));
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

try {
  const results = { filtered: [] as number[], unfiltered: [] as number[] };
  for (let round = 0; round < ROUNDS; round++) {
    // Alternate which goes first, so drift on a shared machine does not favour one.
    const order: ('filtered' | 'unfiltered')[] = round % 2 ? ['unfiltered', 'filtered'] : ['filtered', 'unfiltered'];
    for (const kind of order) {
      const mbs = await downloads(kind === 'filtered');
      results[kind].push(...mbs);
      console.log(`round ${round + 1} ${kind}: ${mbs.map((x) => x.toFixed(1)).join(' ')} MB/s`);
    }
  }
  const f = median(results.filtered);
  const u = median(results.unfiltered);
  console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? '?'}`);
  console.log(`guest download of ${SIZE / MiB} MiB over user networking, median of ${results.filtered.length} each:`);
  console.log(`  unfiltered ${u.toFixed(1)} MB/s, filtered ${f.toFixed(1)} MB/s, ratio filtered/unfiltered ${(f / u).toFixed(2)} (target >= 0.8)`);
} finally {
  net.close();
  data.cleanup();
}
