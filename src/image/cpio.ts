/**
 * A deterministic writer for the cpio "newc" format the Linux kernel unpacks as an initramfs.
 * Same entries in, same bytes out: no timestamps, owners or inode numbers from the build machine.
 */

export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Buffer; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'chardev'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}

function pad4(len: number): Buffer {
  return Buffer.alloc((4 - (len % 4)) % 4);
}

function header(fields: { ino: number; mode: number; nlink: number; size: number; rdevmajor: number; rdevminor: number; name: string }): Buffer {
  const nameBuf = Buffer.from(`${fields.name}\0`, 'utf8');
  const h =
    '070701' +
    hex8(fields.ino) +
    hex8(fields.mode) +
    hex8(0) + // uid
    hex8(0) + // gid
    hex8(fields.nlink) +
    hex8(0) + // mtime
    hex8(fields.size) +
    hex8(0) + // devmajor
    hex8(0) + // devminor
    hex8(fields.rdevmajor) +
    hex8(fields.rdevminor) +
    hex8(nameBuf.length) +
    hex8(0); // check
  const head = Buffer.concat([Buffer.from(h, 'ascii'), nameBuf]);
  return Buffer.concat([head, pad4(head.length)]);
}

function normalise(path: string): string {
  const p = path.replace(/^\/+/, '').replace(/\/+$/, '');
  if (p === '' || p.split('/').some((s) => s === '..' || s === '.' || s === '')) {
    throw new Error(`cpio: bad path "${path}"`);
  }
  return p;
}

/** Builds a newc archive. Entries are sorted by path so that input order does not change the bytes. */
export function writeCpio(entries: CpioEntry[]): Buffer {
  const sorted = [...entries].map((e) => ({ ...e, path: normalise(e.path) })).sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const seen = new Set<string>();
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of sorted) {
    if (seen.has(e.path)) throw new Error(`cpio: duplicate path "${e.path}"`);
    seen.add(e.path);
    let mode: number;
    let data: Buffer = Buffer.alloc(0);
    let rdevmajor = 0;
    let rdevminor = 0;
    switch (e.type) {
      case 'dir':
        mode = S_IFDIR | (e.mode ?? 0o755);
        break;
      case 'file':
        mode = S_IFREG | (e.mode ?? 0o644);
        data = e.data;
        break;
      case 'symlink':
        mode = S_IFLNK | 0o777;
        data = Buffer.from(e.target, 'utf8');
        break;
      case 'chardev':
        mode = S_IFCHR | (e.mode ?? 0o600);
        rdevmajor = e.major;
        rdevminor = e.minor;
        break;
      default: {
        const never: never = e;
        throw new Error(`cpio: unknown entry ${String(never)}`);
      }
    }
    parts.push(header({ ino: ino++, mode, nlink: e.type === 'dir' ? 2 : 1, size: data.length, rdevmajor, rdevminor, name: e.path }));
    parts.push(data, pad4(data.length));
  }
  parts.push(header({ ino: 0, mode: 0, nlink: 1, size: 0, rdevmajor: 0, rdevminor: 0, name: 'TRAILER!!!' }));
  return Buffer.concat(parts);
}

/** Reads a newc archive back (used by tests and by image verification). */
export function readCpio(buf: Buffer): { path: string; mode: number; data: Buffer; rdev: [number, number] }[] {
  const out: { path: string; mode: number; data: Buffer; rdev: [number, number] }[] = [];
  let off = 0;
  for (;;) {
    const magic = buf.toString('ascii', off, off + 6);
    if (magic !== '070701') throw new Error(`cpio: bad magic at ${off}`);
    const field = (i: number) => parseInt(buf.toString('ascii', off + 6 + i * 8, off + 14 + i * 8), 16);
    const mode = field(1);
    const size = field(6);
    const namesize = field(11);
    const rdev: [number, number] = [field(9), field(10)];
    const nameStart = off + 110;
    const name = buf.toString('utf8', nameStart, nameStart + namesize - 1);
    let p = nameStart + namesize;
    p += (4 - (p % 4)) % 4;
    const data = buf.subarray(p, p + size);
    p += size;
    p += (4 - (p % 4)) % 4;
    off = p;
    if (name === 'TRAILER!!!') break;
    out.push({ path: name, mode, data, rdev });
  }
  return out;
}
