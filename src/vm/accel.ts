/**
 * Which accelerator a guest gets. "Usable KVM" is decided honestly: the device node alone is not enough
 * (these build machines have /dev/kvm backed by kvm_pvm, which hangs stock kernels).
 */
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import type { Arch } from '../core/arch.ts';

export interface AccelChoice {
  accel: 'kvm' | 'tcg';
  /** One line a user can read: why this accelerator. */
  reason: string;
}

export interface HostProbe {
  exists(path: string): boolean;
  readable(path: string): boolean;
  read(path: string): string;
}

export const realHostProbe: HostProbe = {
  exists: existsSync,
  readable(p) {
    try {
      accessSync(p, constants.R_OK | constants.W_OK);
      return true;
    } catch {
      return false;
    }
  },
  read(p) {
    try {
      return readFileSync(p, 'utf8');
    } catch {
      return '';
    }
  },
};

/** `override` comes from config (KILN_ACCEL): 'kvm', 'tcg' or 'auto'. */
export function chooseAccel(guest: Arch, host: Arch | undefined, probe: HostProbe, override: 'auto' | 'kvm' | 'tcg' = 'auto'): AccelChoice {
  if (override === 'tcg') return { accel: 'tcg', reason: 'TCG emulation was requested (KILN_ACCEL=tcg)' };
  if (host !== guest) {
    return { accel: 'tcg', reason: `${guest} guest on a ${host ?? 'foreign'} host: the guest CPU is emulated by QEMU's TCG` };
  }
  const why = kvmProblem(host, probe);
  if (why === undefined) return { accel: 'kvm', reason: 'KVM hardware virtualization' };
  if (override === 'kvm') return { accel: 'kvm', reason: `KVM was requested (KILN_ACCEL=kvm) although ${why}` };
  return { accel: 'tcg', reason: `no usable KVM (${why}): the guest runs under QEMU's TCG emulation, roughly 10x slower` };
}

function kvmProblem(host: Arch, probe: HostProbe): string | undefined {
  if (!probe.exists('/dev/kvm')) return '/dev/kvm does not exist';
  if (!probe.readable('/dev/kvm')) return '/dev/kvm is not accessible to this user';
  if (probe.exists('/sys/module/kvm_pvm')) return '/dev/kvm is backed by kvm_pvm, which cannot run stock guest kernels';
  if (host === 'amd64') {
    const flags = /^flags\s*:(.*)$/m.exec(probe.read('/proc/cpuinfo'))?.[1]?.split(/\s+/) ?? [];
    const vmx = flags.includes('vmx');
    const svm = flags.includes('svm');
    if (!vmx && !svm) return 'the CPU has neither vmx nor svm';
    if (vmx && !probe.exists('/sys/module/kvm_intel')) return 'the kvm_intel module is not loaded';
    if (svm && !probe.exists('/sys/module/kvm_amd')) return 'the kvm_amd module is not loaded';
  }
  return undefined;
}
