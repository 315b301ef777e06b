/**
 * kiln-clone-fix: a tiny static program (one ELF segment, no libc) that kiln-init runs in a VM restored
 * from a memory snapshot. It reads a `struct timespec` (16 bytes: seconds, nanoseconds, little-endian)
 * from stdin and sets the wall clock to it (clock_settime(CLOCK_REALTIME)), then forces the kernel to
 * reseed its RNG (ioctl RNDRESEEDCRNG on /dev/urandom) after kiln-init has written fresh host entropy
 * there. Exit status 0 only if every step worked. kiln carries it in every image itself (src/image/),
 * so no image tool (perl, python, date with sub-second precision) is assumed.
 *
 * The bytes below are the assembled instructions; the source is in the comment above each array.
 */
import type { Arch } from '../core/arch.ts';

/*
 * x86-64 (assembled with GNU as, Intel syntax):
 *   sub rsp,16; xor r12d,r12d
 *   xor eax,eax; xor edi,edi; mov rsi,rsp; mov edx,16; syscall        ; read(0, sp, 16)
 *   cmp rax,16; jne 1f
 *   mov eax,227; xor edi,edi; mov rsi,rsp; syscall; mov r12,rax         ; clock_settime(CLOCK_REALTIME, sp)
 * 1: mov eax,2; lea rdi,[rip+path]; mov esi,1; syscall                ; open("/dev/urandom", O_WRONLY)
 *   test rax,rax; js 2f
 *   mov edi,eax; mov eax,16; mov esi,0x5207; xor edx,edx; syscall     ; ioctl(fd, RNDRESEEDCRNG, 0)
 * 2: or rax,r12; mov edi,eax; mov eax,60; syscall                     ; exit(status of both)
 * path: .asciz "/dev/urandom"
 */
const AMD64 =
  '4883ec104531e431c031ff4889e6ba100000000f054883f810750fb8e300000031ff4889e60f054989c4b802000000488d3d28000000' +
  'be010000000f054885c0781089c7b810000000be0752000031d20f054c09e089c7b83c0000000f052f6465762f7572616e646f6d00';

/*
 * arm64 (A64 encodings, little-endian words):
 *   sub sp,sp,#16; mov x19,#0
 *   mov x0,#0; mov x1,sp; mov x2,#16; mov x8,#63; svc #0               ; read(0, sp, 16)
 *   cmp x0,#16; b.ne 1f
 *   mov x0,#0; mov x1,sp; mov x8,#112; svc #0; mov x19,x0              ; clock_settime(CLOCK_REALTIME, sp)
 * 1: mov x0,#-100; adr x1,path; mov x2,#1; mov x3,#0; mov x8,#56; svc #0 ; openat(AT_FDCWD, path, O_WRONLY)
 *   tbnz x0,#63,2f
 *   mov x1,#0x5207; mov x2,#0; mov x8,#29; svc #0                       ; ioctl(fd, RNDRESEEDCRNG, 0)
 * 2: orr x0,x0,x19; mov x8,#93; svc #0                                 ; exit(status of both)
 * path: .asciz "/dev/urandom"
 */
const ARM64_WORDS = [
  0xd10043ff, 0xd2800013, 0xd2800000, 0x910003e1, 0xd2800202, 0xd28007e8, 0xd4000001, 0xf100401f, 0x540000c1, 0xd2800000,
  0x910003e1, 0xd2800e08, 0xd4000001, 0xaa0003f3, 0x92800c60, 0x100001a1, 0xd2800022, 0xd2800003, 0xd2800708, 0xd4000001,
  0xb7f800a0, 0xd28a40e1, 0xd2800002, 0xd28003a8, 0xd4000001, 0xaa130000, 0xd2800ba8, 0xd4000001,
];

function arm64Code(): Buffer {
  const b = Buffer.alloc(ARM64_WORDS.length * 4);
  ARM64_WORDS.forEach((w, i) => b.writeUInt32LE(w, i * 4));
  return Buffer.concat([b, Buffer.from('/dev/urandom\0', 'latin1')]);
}

/** A static ELF64 executable: header, one read+execute PT_LOAD segment, then the code. */
export function tinyElf(code: Buffer, machine: number): Buffer {
  const base = 0x400000;
  const codeOff = 64 + 56;
  const total = codeOff + code.length;
  const h = Buffer.alloc(codeOff);
  h.write('\x7fELF', 0, 'latin1');
  h[4] = 2; // 64-bit
  h[5] = 1; // little-endian
  h[6] = 1; // ELF version
  h.writeUInt16LE(2, 16); // ET_EXEC
  h.writeUInt16LE(machine, 18);
  h.writeUInt32LE(1, 20);
  h.writeBigUInt64LE(BigInt(base + codeOff), 24); // entry
  h.writeBigUInt64LE(64n, 32); // program headers right after this header
  h.writeUInt16LE(64, 52); // header size
  h.writeUInt16LE(56, 54); // program header size
  h.writeUInt16LE(1, 56); // one program header
  h.writeUInt16LE(64, 58); // section header size (no sections)
  const p = 64;
  h.writeUInt32LE(1, p); // PT_LOAD
  h.writeUInt32LE(5, p + 4); // R + X
  h.writeBigUInt64LE(0n, p + 8); // file offset
  h.writeBigUInt64LE(BigInt(base), p + 16);
  h.writeBigUInt64LE(BigInt(base), p + 24);
  h.writeBigUInt64LE(BigInt(total), p + 32);
  h.writeBigUInt64LE(BigInt(total), p + 40);
  h.writeBigUInt64LE(0x1000n, p + 48);
  return Buffer.concat([h, code]);
}

/** The kiln-clone-fix executable for a guest architecture. */
export function cloneFixBinary(arch: Arch): Buffer {
  return arch === 'amd64' ? tinyElf(Buffer.from(AMD64, 'hex'), 62) : tinyElf(arm64Code(), 183);
}
