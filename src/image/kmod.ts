/**
 * Kernel modules for the minimal guest: which .ko files to put in the initramfs and in what order to
 * insmod them, read from each module's own .modinfo (`depends=`), so no depmod is needed at build time.
 */

/** Reads `key=value` strings from a module's .modinfo section (NUL-separated; we scan the whole file). */
export function modinfoValue(ko: Buffer, key: string): string | undefined {
  const needle = Buffer.from(`\0${key}=`, 'ascii');
  const at = ko.indexOf(needle);
  if (at < 0) return undefined;
  const start = at + needle.length;
  const end = ko.indexOf(0, start);
  return ko.toString('utf8', start, end < 0 ? undefined : end);
}

export function moduleDepends(ko: Buffer): string[] {
  const v = modinfoValue(ko, 'depends');
  return v ? v.split(',').map((s) => s.trim()).filter(Boolean) : [];
}

/** Module names use '_' and '-' interchangeably. */
export function canonicalModuleName(name: string): string {
  return name.replace(/-/g, '_');
}

/**
 * Orders the wanted modules and their dependencies so that every module comes after what it depends
 * on. `available` maps canonical names to their relative paths; `depsOf` reads a module's dependencies;
 * `builtin` names modules compiled into the kernel (no file needed). Modules that exist neither as a
 * file nor built in are reported in `missing`.
 */
export function orderModules(
  wanted: string[],
  available: Map<string, string>,
  builtin: Set<string>,
  depsOf: (name: string) => string[],
): { order: string[]; missing: string[] } {
  const order: string[] = [];
  const missing: string[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (raw: string, chain: string[]) => {
    const name = canonicalModuleName(raw);
    if (builtin.has(name) || state.get(name) === 'done') return;
    if (state.get(name) === 'visiting') throw new Error(`module dependency cycle: ${[...chain, name].join(' -> ')}`);
    if (!available.has(name)) {
      if (!missing.includes(name)) missing.push(name);
      return;
    }
    state.set(name, 'visiting');
    for (const d of depsOf(name)) visit(d, [...chain, name]);
    state.set(name, 'done');
    order.push(name);
  };
  for (const w of wanted) visit(w, []);
  return { order, missing };
}
