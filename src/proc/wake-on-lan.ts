/**
 * Sending a Wake-on-LAN magic packet: by the server (`wol` hosts) and by an awake agent relaying for an asleep
 * host on its network. The packet itself is core/power.ts's `magicPacket`.
 */
import { createSocket } from 'node:dgram';
import { magicPacket } from '../core/power.ts';

/** Sends the magic packet for `mac` to `broadcast:port` (UDP; broadcast allowed unless it is loopback). */
export async function sendMagicPacket(mac: string, broadcast: string, port: number): Promise<void> {
  const packet = magicPacket(mac);
  const sock = createSocket(broadcast.includes(':') ? 'udp6' : 'udp4');
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.bind(0, () => {
        if (!/^127\.|^::1$/.test(broadcast)) sock.setBroadcast(true);
        sock.send(packet, port, broadcast, (e) => (e ? reject(e) : resolve()));
      });
    });
  } finally {
    sock.close();
  }
}
