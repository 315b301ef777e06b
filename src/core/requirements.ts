/**
 * What a job needs from a host, and the label grammar of DESIGN.md that spells it in `runs-on`:
 * `kiln` (x86-64, default size), `kiln-arm64`, `kiln-4cpu-16gb`, `kiln-arm64-8cpu-32gb`. Every label must be
 * satisfied; unknown kiln-prefixed labels are a user error, never a silent drop.
 */
import { parseArch, type Arch } from './arch.ts';
import { KilnError } from './errors.ts';

export interface Requirements {
  arch: Arch;
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
  /** Extra labels a host must carry (pools), e.g. `gpu` or `pool=ci`. */
  hostLabels: string[];
}

const GiB = 1024 ** 3;
export const DEFAULT_REQUIREMENTS: Requirements = {
  arch: 'amd64',
  cpus: 2,
  memoryBytes: 4 * GiB,
  diskBytes: 10 * GiB,
  hostLabels: [],
};

/** Upper bounds on any single job; larger requests are a user error (no host could ever hold them). */
export const LIMITS = { cpus: 256, memoryBytes: 4096 * GiB, diskBytes: 64 * 1024 * GiB };

/** Labels GitHub adds to every self-hosted runner; they are satisfied by every kiln host. */
const IMPLICIT = new Set(['self-hosted', 'linux']);
const ARCH_WORDS = new Set(['amd64', 'x64', 'x86_64', 'arm64', 'aarch64']);

/**
 * Parses a job's labels. Returns the requirements or throws `label.unknown` / `label.conflict` naming the
 * offending label. Labels that are not kiln-prefixed (and not implicit) become host labels.
 */
export function parseLabels(labels: readonly string[]): Requirements {
  let kiln: { label: string; req: Partial<Requirements> } | undefined;
  const hostLabels: string[] = [];
  let archHint: Arch | undefined;
  for (const raw of labels) {
    const label = raw.trim();
    const lower = label.toLowerCase();
    if (cacheLabelKey(label) !== undefined) continue; // a warm cache, not a machine (cacheFromLabels)
    if (lower === 'kiln' || lower.startsWith('kiln-')) {
      const req = parseKilnLabel(label);
      if (kiln) {
        throw new KilnError('label.conflict', `labels "${kiln.label}" and "${label}" both choose a kiln machine`, {
          hint: 'use one kiln label, such as kiln-arm64-8cpu-32gb',
        });
      }
      kiln = { label, req };
      continue;
    }
    if (IMPLICIT.has(lower)) continue;
    if (lower === 'x64' || lower === 'arm64') {
      archHint = lower === 'x64' ? 'amd64' : 'arm64';
      continue;
    }
    if (label.length === 0 || label.length > 100 || !/^[A-Za-z0-9._=:/-]+$/.test(label)) {
      throw new KilnError('label.invalid', `"${raw}" is not a valid label`, { hint: 'labels use letters, digits and . _ = : / -' });
    }
    hostLabels.push(label);
  }
  const req: Requirements = { ...DEFAULT_REQUIREMENTS, ...kiln?.req, hostLabels: [...new Set(hostLabels)].sort() };
  if (archHint && kiln?.req.arch && kiln.req.arch !== archHint) {
    throw new KilnError('label.conflict', `label "${kiln.label}" asks for ${kiln.req.arch} but another label asks for ${archHint}`);
  }
  if (archHint && !kiln?.req.arch) req.arch = archHint;
  return req;
}

/**
 * `kiln-cache` (the repository's cache) or `kiln-cache-KEY` (a named one): '' for the former, KEY for the
 * latter, undefined for any other label. Pure.
 */
export function cacheLabelKey(label: string): string | undefined {
  const l = label.trim();
  if (l.toLowerCase() === 'kiln-cache') return '';
  const m = /^kiln-cache-([A-Za-z0-9][A-Za-z0-9._-]{0,99})$/i.exec(l);
  return m ? m[1]! : undefined;
}

/** The cache a labelled job asks for: '' for the repository's own, a KEY, or undefined (none). Two cache labels conflict. */
export function cacheFromLabels(labels: readonly string[]): string | undefined {
  const keys = labels.map(cacheLabelKey).filter((k): k is string => k !== undefined);
  if (keys.length > 1) throw new KilnError('label.conflict', `labels ask for ${keys.length} caches; a job gets one`, { hint: 'keep one kiln-cache or kiln-cache-KEY label' });
  return keys[0];
}

function parseKilnLabel(label: string): Partial<Requirements> {
  const parts = label.toLowerCase().split('-').slice(1);
  const req: Partial<Requirements> = {};
  const unknown = (): never => {
    throw new KilnError('label.unknown', `unknown kiln label "${label}"`, {
      hint: 'kiln labels look like kiln, kiln-arm64, kiln-4cpu-16gb or kiln-arm64-8cpu-32gb (optionally -100gb-disk)',
    });
  };
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i] ?? '';
    let m: RegExpExecArray | null;
    if (ARCH_WORDS.has(p) && req.arch === undefined && req.cpus === undefined) {
      req.arch = parseArch(p);
    } else if ((m = /^(\d{1,3})cpus?$/.exec(p)) && req.cpus === undefined && req.memoryBytes === undefined) {
      req.cpus = Number(m[1]);
    } else if ((m = /^(\d{1,5})gb$/.exec(p)) && parts[i + 1] === 'disk' && req.diskBytes === undefined) {
      req.diskBytes = Number(m[1]) * GiB;
      i++;
    } else if ((m = /^(\d{1,5})gb$/.exec(p)) && req.memoryBytes === undefined && req.diskBytes === undefined) {
      req.memoryBytes = Number(m[1]) * GiB;
    } else {
      unknown();
    }
  }
  if (req.cpus === 0 || req.memoryBytes === 0 || req.diskBytes === 0) unknown();
  return req;
}

/** The canonical kiln label for a set of requirements (inverse of parseLabels for the kiln part). */
export function formatKilnLabel(r: Pick<Requirements, 'arch' | 'cpus' | 'memoryBytes'>): string {
  const arch = r.arch === 'amd64' ? '' : `-${r.arch}`;
  return `kiln${arch}-${r.cpus}cpu-${Math.round(r.memoryBytes / GiB)}gb`;
}

/** Checks explicit requirements (from the API rather than labels). */
export function validateRequirements(r: Requirements): Requirements {
  const problems: string[] = [];
  const intIn = (v: number, lo: number, hi: number) => Number.isInteger(v) && v >= lo && v <= hi;
  if (!intIn(r.cpus, 1, LIMITS.cpus)) problems.push(`cpus must be a whole number from 1 to ${LIMITS.cpus}`);
  if (!intIn(r.memoryBytes, 16 * 1024 ** 2, LIMITS.memoryBytes)) problems.push('memory must be at least 16M and at most 4096G');
  if (!intIn(r.diskBytes, 1024 ** 2, LIMITS.diskBytes)) problems.push('disk must be at least 1M and at most 65536G');
  if (problems.length > 0) {
    throw new KilnError('job.bad_requirements', problems.join('; '), { hint: 'ask for sizes a host can hold' });
  }
  return r;
}
