/**
 * cgroup limits for a VM's QEMU process: CPU quota, memory (no swap) and pids, on cgroup v1 (a hierarchy
 * per controller, as on these build machines) and v2 (unified). Each VM gets kiln/<vm-id> in every
 * hierarchy it uses; the QEMU process joins them before it execs (see qemu-driver's launch wrapper).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export type Controller = 'cpu' | 'memory' | 'pids';
const CONTROLLERS: Controller[] = ['cpu', 'memory', 'pids'];

export interface CgroupLayout {
  /** For each controller, the hierarchy root that has it and whether it is v1 or v2. */
  controllers: Partial<Record<Controller, { root: string; version: 1 | 2 }>>;
  /** Why some controller is unavailable (not root, not mounted), for one warning line. */
  problems: string[];
  /**
   * The cgroup v2 hierarchy, even when no controller lives there (hybrid hosts mount it at
   * /sys/fs/cgroup/unified): the egress filter matches a VM's sockets by their v2 cgroup.
   */
  v2Root?: string;
}

export interface CgroupLimits {
  cpus: number;
  memoryBytes: number;
  pids: number;
}

export function detectCgroups(mountsText = readSafe('/proc/mounts')): CgroupLayout {
  const layout: CgroupLayout = { controllers: {}, problems: [] };
  const v2roots: string[] = [];
  for (const line of mountsText.split('\n')) {
    const [, mountPoint, type, options] = line.split(' ');
    if (!mountPoint || !options) continue;
    if (type === 'cgroup') {
      const opts = options.split(',');
      for (const c of CONTROLLERS) if (opts.includes(c) && !layout.controllers[c]) layout.controllers[c] = { root: mountPoint, version: 1 };
    } else if (type === 'cgroup2') v2roots.push(mountPoint);
  }
  if (v2roots[0]) layout.v2Root = v2roots[0];
  for (const root of v2roots) {
    const available = readSafe(join(root, 'cgroup.controllers')).split(/\s+/);
    for (const c of CONTROLLERS) if (!layout.controllers[c] && available.includes(c)) layout.controllers[c] = { root, version: 2 };
  }
  for (const c of CONTROLLERS) if (!layout.controllers[c]) layout.problems.push(`the ${c} controller is not mounted`);
  if (process.getuid?.() !== 0) layout.problems.push('kiln is not running as root');
  return layout;
}

function readSafe(p: string): string {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

export interface VmCgroup {
  /** cgroup.procs files the QEMU process writes its pid into. */
  procsFiles: string[];
  dirs: string[];
}

function kilnDir(root: string): string {
  return join(root, 'kiln');
}

/**
 * Creates kiln/<id> in each hierarchy and writes the limits. Throws if a limit cannot be written. With `v2`,
 * the VM also gets kiln/<id> in the v2 hierarchy when no controller put it there (the egress filter's match).
 */
export function createVmCgroup(layout: CgroupLayout, id: string, limits: CgroupLimits, v2 = false): VmCgroup {
  // 'plain': a v2 directory without controllers, only for the egress filter's match.
  const dirs = new Map<string, 1 | 2 | 'plain'>();
  for (const c of CONTROLLERS) {
    const h = layout.controllers[c];
    if (h) dirs.set(join(kilnDir(h.root), id), h.version);
  }
  if (v2 && layout.v2Root && !dirs.has(join(kilnDir(layout.v2Root), id))) dirs.set(join(kilnDir(layout.v2Root), id), 'plain');
  const created: string[] = [];
  try {
    for (const [dir, version] of dirs) {
      const parent = join(dir, '..');
      if (!existsSync(parent)) mkdirSync(parent);
      if (version === 2) enableV2Controllers(join(parent, '..'), parent);
      mkdirSync(dir);
      created.push(dir);
    }
    for (const c of CONTROLLERS) {
      const h = layout.controllers[c];
      if (!h) continue;
      const dir = join(kilnDir(h.root), id);
      writeLimits(dir, c, h.version, limits);
    }
  } catch (e) {
    removeCgroupDirs(created);
    throw e;
  }
  return { procsFiles: created.map((d) => join(d, 'cgroup.procs')), dirs: created };
}

function enableV2Controllers(root: string, kiln: string): void {
  for (const dir of [root, kiln]) {
    const have = readSafe(join(dir, 'cgroup.subtree_control')).split(/\s+/);
    const want = CONTROLLERS.filter((c) => !have.includes(c)).map((c) => `+${c}`);
    if (want.length > 0) writeFileSync(join(dir, 'cgroup.subtree_control'), want.join(' '));
  }
}

function writeLimits(dir: string, c: Controller, version: 1 | 2, l: CgroupLimits): void {
  const w = (file: string, value: string | number, optional = false) => {
    const p = join(dir, file);
    if (optional && !existsSync(p)) return;
    writeFileSync(p, String(value));
  };
  const period = 100_000;
  const quota = Math.max(1000, Math.round(l.cpus * period));
  if (version === 1) {
    if (c === 'cpu') {
      w('cpu.cfs_period_us', period);
      w('cpu.cfs_quota_us', quota);
    } else if (c === 'memory') {
      w('memory.limit_in_bytes', l.memoryBytes);
      // No swap for VMs where swap accounting exists (memsw must be set after the plain limit).
      w('memory.memsw.limit_in_bytes', l.memoryBytes, true);
      w('memory.swappiness', 0, true);
    } else w('pids.max', l.pids);
  } else if (c === 'cpu') w('cpu.max', `${quota} ${period}`);
  else if (c === 'memory') {
    w('memory.max', l.memoryBytes);
    w('memory.swap.max', 0, true);
    w('memory.oom.group', 1, true);
  } else w('pids.max', l.pids);
}

/** Removes cgroup directories; a cgroup that still has processes is left and reported. */
export function removeCgroupDirs(dirs: string[]): string[] {
  const left: string[] = [];
  for (const d of dirs) {
    try {
      rmdirSync(d);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') left.push(d);
    }
  }
  return left;
}

/** VM ids that have a kiln cgroup in any hierarchy (for the start-up sweep). */
export function listVmCgroups(layout: CgroupLayout): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const roots = new Set([...Object.values(layout.controllers).map((h) => h.root), ...(layout.v2Root ? [layout.v2Root] : [])]);
  for (const root of roots) {
    const k = kilnDir(root);
    if (!existsSync(k)) continue;
    for (const e of readdirSync(k, { withFileTypes: true })) {
      if (!e.isDirectory()) continue;
      out.set(e.name, [...(out.get(e.name) ?? []), join(k, e.name)]);
    }
  }
  return out;
}

export function cgroupPids(dir: string): number[] {
  return readSafe(join(dir, 'cgroup.procs'))
    .split('\n')
    .filter(Boolean)
    .map(Number);
}
