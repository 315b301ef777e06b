/** A minimal QMP client over a connected socket: greeting, capabilities negotiation, commands, events. */
import type { Socket } from 'node:net';
import { KilnError } from '../core/errors.ts';
import { makeLineSplitter } from './channel.ts';

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
}

export interface Qmp {
  execute(command: string, args?: Record<string, unknown>): Promise<unknown>;
  onEvent(cb: (event: string, data: unknown) => void): void;
  close(): void;
}

export function makeQmp(sock: Socket): Promise<Qmp> {
  return new Promise((resolveReady, rejectReady) => {
    const queue: Pending[] = [];
    const listeners: ((event: string, data: unknown) => void)[] = [];
    let greeted = false;
    const fail = (e: Error) => {
      for (const p of queue.splice(0)) p.reject(e);
      if (!greeted) rejectReady(e);
    };
    const qmp: Qmp = {
      execute(command, args) {
        return new Promise((resolve, reject) => {
          if (sock.destroyed) return reject(new KilnError('vm.qmp_closed', 'the VM monitor connection is closed', { kind: 'internal' }));
          queue.push({ resolve, reject });
          sock.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
        });
      },
      onEvent: (cb) => listeners.push(cb),
      close: () => sock.destroy(),
    };
    sock.on(
      'data',
      makeLineSplitter((line) => {
        if (!line.trim()) return;
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(line) as Record<string, unknown>;
        } catch {
          return;
        }
        if ('QMP' in msg && !greeted) {
          greeted = true;
          qmp.execute('qmp_capabilities').then(() => resolveReady(qmp), rejectReady);
        } else if ('event' in msg) {
          for (const l of listeners) l(String(msg.event), msg.data);
        } else if ('return' in msg) {
          queue.shift()?.resolve(msg.return);
        } else if ('error' in msg) {
          const err = msg.error as { desc?: string };
          queue.shift()?.reject(new KilnError('vm.qmp_error', `QEMU monitor: ${err.desc ?? 'error'}`, { kind: 'internal' }));
        }
      }),
    );
    sock.on('error', (e) => fail(e));
    sock.on('close', () => fail(new KilnError('vm.qmp_closed', 'the VM monitor connection closed', { kind: 'internal' })));
  });
}
