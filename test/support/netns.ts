/**
 * A network namespace a test or benchmark creates for itself: a veth pair whose far end holds the addresses
 * given (private or link-local ones, never anyone else's), each serving one HTTP answer on port 80 with socat.
 * Removed by close(); nothing outside the namespace and its veth is touched.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestNetns {
  /** Closes the servers, deletes the veth and the namespace. */
  close(): void;
}

const run = (args: string[]) => {
  const r = spawnSync(args[0]!, args.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${args.join(' ')}: ${r.stderr}`);
};

/**
 * `subnet` is the /24 prefix of the veth link (e.g. '10.213.7'; the host side is .1); `extra` are /32 addresses
 * routed to the namespace too (e.g. 169.254.169.254); `answers` maps each served address to the body it sends.
 */
export async function startTestNetns(subnet: string, extra: string[], answers: Record<string, Buffer | string>): Promise<TestNetns> {
  const tag = randomBytes(3).toString('hex');
  const ns = `kilnt-${tag}`;
  const host = `kt${tag}h`;
  const far = `kt${tag}n`;
  const dir = mkdtempSync(join(tmpdir(), 'kiln-netns-'));
  const servers: ChildProcess[] = [];
  const close = () => {
    for (const p of servers) p.kill('SIGKILL');
    spawnSync('ip', ['link', 'del', host]);
    spawnSync('ip', ['netns', 'del', ns]);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    run(['ip', 'netns', 'add', ns]);
    run(['ip', 'link', 'add', host, 'type', 'veth', 'peer', 'name', far]);
    run(['ip', 'link', 'set', far, 'netns', ns]);
    run(['ip', 'addr', 'add', `${subnet}.1/24`, 'dev', host]);
    run(['ip', 'link', 'set', host, 'up']);
    for (const a of extra) run(['ip', 'route', 'add', `${a}/32`, 'dev', host]);
    for (const a of Object.keys(answers)) run(['ip', '-n', ns, 'addr', 'add', a.startsWith(`${subnet}.`) ? `${a}/24` : `${a}/32`, 'dev', far]);
    run(['ip', '-n', ns, 'link', 'set', far, 'up']);
    run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    run(['ip', '-n', ns, 'route', 'add', 'default', 'via', `${subnet}.1`]);
    for (const [addr, body] of Object.entries(answers)) {
      const file = join(dir, `answer-${addr}.http`);
      const b = Buffer.isBuffer(body) ? body : Buffer.from(body);
      writeFileSync(file, Buffer.concat([Buffer.from(`HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ${b.length}\r\n\r\n`), b]));
      servers.push(spawn('ip', ['netns', 'exec', ns, 'socat', `TCP-LISTEN:80,bind=${addr},fork,reuseaddr`, `SYSTEM:cat ${file}`], { stdio: 'ignore' }));
    }
    // Each server answers the host before anyone relies on it.
    for (const addr of Object.keys(answers)) {
      for (let i = 0; ; i++) {
        const r = spawnSync('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '-m', '2', `http://${addr}/`], { encoding: 'utf8' });
        if (r.stdout === '200') break;
        if (i > 100) throw new Error(`the namespace's server at ${addr} never answered from the host`);
        await new Promise((res) => setTimeout(res, 100));
      }
    }
  } catch (e) {
    close();
    throw e;
  }
  return { close };
}
