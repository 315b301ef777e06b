/**
 * An empty qcow2 (version 3) overlay written directly: the file `qemu-img create -f qcow2 -b BACKING -F FMT`
 * makes, without starting a process (a spawn costs more than the rest of a warm start's prepare).
 * Layout: cluster 0 header (+ backing-format extension and the backing file name), cluster 1 refcount
 * table, cluster 2 refcount block (clusters 0..n in use), clusters 3.. the L1 table, all zero: every read
 * goes to the backing file until the guest writes.
 */
import { openSync, readSync, closeSync, writeFileSync } from 'node:fs';
import { KilnError } from '../core/errors.ts';

const CLUSTER_BITS = 16;
const CLUSTER = 1 << CLUSTER_BITS;

/** The virtual size recorded in a qcow2 file's header. */
export function qcow2VirtualSize(path: string): number {
  const fd = openSync(path, 'r');
  try {
    const h = Buffer.alloc(32);
    readSync(fd, h, 0, 32, 0);
    if (h.toString('latin1', 0, 4) !== 'QFI\xfb') throw new KilnError('vm.disk_failed', `${path} is not a qcow2 file`, { kind: 'internal' });
    return Number(h.readBigUInt64BE(24));
  } finally {
    closeSync(fd);
  }
}

export function writeQcow2Overlay(path: string, backing: string, backingFormat: 'raw' | 'qcow2', virtualSize: number): void {
  if (!backing.startsWith('/')) throw new KilnError('vm.disk_failed', 'an overlay\'s backing file must be an absolute path', { kind: 'internal' });
  const l2Coverage = (CLUSTER / 8) * CLUSTER;
  const l1Size = Math.max(1, Math.ceil(virtualSize / l2Coverage));
  const l1Clusters = Math.ceil((l1Size * 8) / CLUSTER);
  const clusters = 3 + l1Clusters;
  if (clusters > CLUSTER / 2) throw new KilnError('vm.disk_failed', 'disk too large for a one-block refcount table', { kind: 'internal' });
  const file = Buffer.alloc(clusters * CLUSTER);
  // Header (big-endian), version 3, 112 bytes with the compression type (zlib).
  file.write('QFI\xfb', 0, 'latin1');
  file.writeUInt32BE(3, 4);
  file.writeUInt32BE(CLUSTER_BITS, 20);
  file.writeBigUInt64BE(BigInt(virtualSize), 24);
  file.writeUInt32BE(l1Size, 36);
  file.writeBigUInt64BE(BigInt(3 * CLUSTER), 40); // L1 table
  file.writeBigUInt64BE(BigInt(CLUSTER), 48); // refcount table
  file.writeUInt32BE(1, 56);
  file.writeUInt32BE(4, 96); // refcount_order: 16-bit refcounts
  file.writeUInt32BE(112, 100);
  // Header extensions: the backing file's format, then the end marker.
  let off = 112;
  const fmt = Buffer.from(backingFormat, 'latin1');
  file.writeUInt32BE(0xe2792aca, off);
  file.writeUInt32BE(fmt.length, off + 4);
  fmt.copy(file, off + 8);
  off += 8 + Math.ceil(fmt.length / 8) * 8;
  off += 8; // end of extensions (type 0, length 0)
  const name = Buffer.from(backing, 'utf8');
  if (off + name.length > CLUSTER) throw new KilnError('vm.disk_failed', 'the backing file path is too long for a qcow2 header', { kind: 'internal' });
  name.copy(file, off);
  file.writeBigUInt64BE(BigInt(off), 8);
  file.writeUInt32BE(name.length, 16);
  // Refcount table -> refcount block at cluster 2, which counts every cluster of this file once.
  file.writeBigUInt64BE(BigInt(2 * CLUSTER), CLUSTER);
  for (let c = 0; c < clusters; c++) file.writeUInt16BE(1, 2 * CLUSTER + 2 * c);
  writeFileSync(path, file, { flag: 'wx', mode: 0o600 });
}
