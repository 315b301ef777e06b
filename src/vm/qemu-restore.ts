/**
 * QEMU VM lifecycle, step 3a (restore; warm starts only, between launch and wait's running phase): the
 * snapshot's device state is loaded into the QEMU started with `-incoming defer`, the guest continues,
 * takes its own identity (entropy, clock, hostname, machine-id) and its per-VM settings (the registry mirrors;
 * the image's restore hook renews Docker's engine identity), and only then gets the job (and its secrets),
 * with NET when it has a NIC: a snapshot's NIC is down with no address, as after a cold boot.
 */
import { join } from 'node:path';
import { KilnError } from '../core/errors.ts';
import type { VmSpec } from './driver.ts';
import type { PreparedVm } from './qemu-prepare.ts';
import type { VmWatch } from './qemu-wait.ts';
import { identityLines, restoreSnapshot } from './snapshot-template.ts';

/** The identity lines alone; images with a restore hook (ci: dockerd restarted) get the VM's boot limit. */
const IDENTITY_TIMEOUT_MS = 20_000;

/**
 * Restores the snapshot in `snapshotDir` into the launched VM and starts its job. Throws if QEMU refuses the
 * state, exits, or the guest does not take its identity; the caller stops the VM and boots cold.
 */
export async function restoreVm(w: VmWatch, vm: PreparedVm, spec: VmSpec, snapshotDir: string, accel: 'kvm' | 'tcg'): Promise<void> {
  const timeoutMs = spec.image.rootDiskPath ? Math.max(IDENTITY_TIMEOUT_MS, w.bootTimeoutMs) : IDENTITY_TIMEOUT_MS;
  const restore = (async () => {
    const q = await w.qmp;
    await restoreSnapshot(q, join(snapshotDir, 'state'), accel === 'kvm' ? 5_000 : 20_000);
    const ctl = await vm.accepted.ctl;
    const ack = new Promise<void>((resolve, reject) => {
      const t = setTimeout(
        () => reject(new KilnError('snapshot.identity_timeout', `the restored guest did not take its identity within ${Math.round(timeoutMs / 1000)}s`, { kind: 'internal' })),
        timeoutMs,
      );
      t.unref();
      w.onIdentity = (failed) => {
        clearTimeout(t);
        if (failed === undefined) resolve();
        else reject(new KilnError('snapshot.identity_failed', `the restored guest could not take its own identity (${failed})`, { kind: 'internal' }));
      };
    });
    ctl.write(
      identityLines(spec.id, {
        ...(spec.registryMirror ? { registryMirror: spec.registryMirror } : {}),
        ...(spec.registryMirrors?.length ? { registryMirrors: spec.registryMirrors } : {}),
        ...(spec.cacheDisk ? { cache: true } : {}),
      }),
    );
    await ack;
    w.guestUp(ctl);
  })();
  const gone = w.exited.then((code) => {
    throw new KilnError('snapshot.restore_failed', `QEMU exited (code ${code ?? 'signal'}) during the restore${w.qemuStderr ? `: ${w.qemuStderr.trim().split('\n').slice(-1)[0]}` : ''}`, {
      kind: 'internal',
    });
  });
  try {
    await Promise.race([restore, gone]);
  } finally {
    void restore.catch(() => undefined);
    void gone.catch(() => undefined);
  }
}
