/**
 * Real parts for the OCI tests: docker-registry instances on loopback with configs written here, images
 * built by buildah, skopeo as the independent checker, and a token-server double (the one edge we fake).
 * Everything started here is registered for cleanup; `cleanup()` in an after-hook stops it all.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, createPrivateKey, createPublicKey, randomUUID, sign } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, get as httpGet, type IncomingMessage, type Server } from 'node:http';
import { get as httpsGet } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from '../agent/processes.ts';

const execFileP = promisify(execFile);

export class Harness {
  private readonly cleanups: (() => Promise<void>)[] = [];
  private readonly procs = new Set<ChildProcess>();
  private buildahRoot?: string;

  async tempDir(prefix = 'kiln-oci-'): Promise<string> {
    const d = await mkdtemp(join(tmpdir(), prefix));
    this.cleanups.push(() => rm(d, { recursive: true, force: true }));
    return d;
  }

  /** Stops every process and removes every temp dir this harness made. */
  async cleanup(): Promise<void> {
    for (const c of this.cleanups.reverse()) await c().catch(() => undefined);
    this.cleanups.length = 0;
  }

  /** PIDs still running that this harness started (a test asserts this is empty after cleanup). */
  livePids(): number[] {
    return [...this.procs].filter((p) => p.exitCode === null && p.signalCode === null).map((p) => p.pid ?? -1);
  }

  /**
   * `accessLog`: the registry logs every request (distribution's access log) and `Registry.requests()` parses
   * them, so a test can count what reached it.
   */
  async startRegistry(opts: { port?: number; proxy?: { remoteurl: string; username?: string; password?: string }; token?: TokenServer; allowForeignUrls?: boolean; tls?: { certFile: string; keyFile: string }; accessLog?: boolean } = {}): Promise<Registry> {
    const dir = await this.tempDir('kiln-registry-');
    const port = opts.port ?? (await freePort());
    const lines = [
      'version: 0.1',
      `log: {level: error, accesslog: {disabled: ${opts.accessLog ? 'false' : 'true'}}}`,
      `storage: {filesystem: {rootdirectory: ${join(dir, 'data')}}, delete: {enabled: true}}`,
      `http: {addr: "127.0.0.1:${port}", secret: kiln-test${opts.tls ? `, tls: {certificate: "${opts.tls.certFile}", key: "${opts.tls.keyFile}"}` : ''}}`,
    ];
    if (opts.proxy) {
      lines.push(`proxy: {remoteurl: "${opts.proxy.remoteurl}"${opts.proxy.username ? `, username: "${opts.proxy.username}", password: "${opts.proxy.password ?? ''}"` : ''}}`);
    }
    if (opts.allowForeignUrls) lines.push("validation: {manifests: {urls: {allow: ['^https?://']}}}");
    if (opts.token) {
      lines.push(`auth: {token: {realm: "${opts.token.realm}", service: "${opts.token.service}", issuer: "${opts.token.issuer}", rootcertbundle: "${opts.token.certFile}"}}`);
    }
    const config = join(dir, 'config.yml');
    await writeFile(config, `${lines.join('\n')}\n`);
    const reg = new Registry(`127.0.0.1:${port}`, config, this.procs, opts.tls !== undefined, opts.accessLog === true);
    this.cleanups.push(() => reg.stop());
    await reg.start();
    return reg;
  }

  async startTokenServer(users: Record<string, string>): Promise<TokenServer> {
    const dir = await this.tempDir('kiln-token-');
    const ts = await TokenServer.start(dir, users);
    this.cleanups.push(() => ts.stop());
    return ts;
  }

  private async buildahArgs(): Promise<string[]> {
    if (!this.buildahRoot) {
      this.buildahRoot = await this.tempDir('kiln-buildah-');
      const root = this.buildahRoot;
      // vfs layers can be read-only for the owner; buildah rm cleans containers, rm -rf the rest.
      this.cleanups.push(async () => {
        await execFileP('buildah', ['--root', join(root, 'root'), '--runroot', join(root, 'run'), '--storage-driver', 'vfs', 'rm', '--all']).catch(() => undefined);
      });
    }
    return ['--root', join(this.buildahRoot, 'root'), '--runroot', join(this.buildahRoot, 'run'), '--storage-driver', 'vfs'];
  }

  async buildah(args: string[]): Promise<string> {
    const { stdout } = await execFileP('buildah', [...(await this.buildahArgs()), ...args], { maxBuffer: 16 * 1024 * 1024 });
    return stdout.trim();
  }

  /**
   * Builds a tiny single-platform image with buildah (from scratch, one file) and returns its local name.
   * `bytes` pads the layer (random content, so it does not compress away).
   */
  async buildImage(o: { arch: string; os?: string; variant?: string; content?: string; bytes?: number; timestamp?: number }): Promise<string> {
    const dir = await this.tempDir('kiln-ctx-');
    await writeFile(join(dir, 'hello.txt'), o.content ?? `hello from ${o.os ?? 'linux'}/${o.arch}${o.variant ? `/${o.variant}` : ''} ${randomUUID()}\n`);
    if (o.bytes) {
      const { randomBytes } = await import('node:crypto');
      await writeFile(join(dir, 'pad.bin'), randomBytes(o.bytes));
    }
    const ctr = await this.buildah(['from', 'scratch']);
    try {
      await this.buildah(['copy', ctr, dir, '/']);
      const cfg = ['config', '--arch', o.arch, '--os', o.os ?? 'linux'];
      if (o.variant) cfg.push('--variant', o.variant);
      await this.buildah([...cfg, ctr]);
      const name = `localhost/kiln-test-${randomUUID().slice(0, 8)}`;
      await this.buildah(['commit', '-q', ...(o.timestamp !== undefined ? ['--timestamp', String(o.timestamp)] : []), ctr, name]);
      return name;
    } finally {
      await this.buildah(['rm', ctr]).catch(() => undefined);
    }
  }

  /**
   * An image of `layers` layers (each `bytesPerLayer` of random data: nothing compresses, no two layers are
   * alike) built from scratch, one commit per layer; returns its local name.
   */
  async buildLayeredImage(o: { arch: string; layers: number; bytesPerLayer: number }): Promise<string> {
    const { randomBytes } = await import('node:crypto');
    let from = 'scratch';
    let name = '';
    for (let i = 0; i < o.layers; i++) {
      const dir = await this.tempDir('kiln-ctx-');
      await writeFile(join(dir, `layer${i}.bin`), randomBytes(o.bytesPerLayer));
      const ctr = await this.buildah(['from', from]);
      try {
        await this.buildah(['copy', ctr, join(dir, `layer${i}.bin`), `/layer${i}.bin`]);
        await this.buildah(['config', '--arch', o.arch, '--os', 'linux', ctr]);
        name = `localhost/kiln-test-${randomUUID().slice(0, 8)}`;
        await this.buildah(['commit', '-q', ctr, name]);
      } finally {
        await this.buildah(['rm', ctr]).catch(() => undefined);
      }
      await rm(dir, { recursive: true, force: true });
      from = name;
    }
    return name;
  }

  /** Pushes a buildah image to `dest` (docker://… or oci:…) and returns the pushed manifest digest. */
  async buildahPush(image: string, dest: string, format: 'oci' | 'v2s2' = 'oci', extra: string[] = []): Promise<string> {
    const dir = await this.tempDir('kiln-digest-');
    const file = join(dir, 'digest');
    await this.buildah(['push', '-q', '--tls-verify=false', '--format', format, '--digestfile', file, ...extra, image, dest]);
    return (await readFile(file, 'utf8')).trim();
  }
}

export class Registry {
  private proc: ChildProcess | undefined;
  output = '';
  /** Every access-log line (only with `accessLog`), in order. */
  private readonly accessLines: string[] = [];
  private partial = '';
  constructor(
    readonly host: string,
    readonly configFile: string,
    private readonly procs: Set<ChildProcess>,
    readonly tls = false,
    private readonly accessLog = false,
  ) {}

  /** The requests the registry answered so far (its access log): method, path and status. */
  requests(): { method: string; path: string; status: number }[] {
    return this.accessLines.flatMap((l) => {
      const m = /"([A-Z]+) (\S+) HTTP\/[0-9.]+" ([0-9]{3}) /.exec(l);
      return m ? [{ method: m[1]!, path: m[2]!, status: Number(m[3]) }] : [];
    });
  }

  get url(): string {
    return `${this.tls ? 'https' : 'http'}://${this.host}`;
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  async start(): Promise<void> {
    // setpriv: the registry dies with the test process even if that crashes before its after-hook.
    const p = spawn('setpriv', ['--pdeathsig', 'KILL', '--', 'docker-registry', 'serve', this.configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = p;
    this.procs.add(p);
    const keep = (d: Buffer) => {
      this.output = (this.output + d.toString()).slice(-8000);
      if (!this.accessLog) return;
      const lines = (this.partial + d.toString()).split('\n');
      this.partial = lines.pop() ?? '';
      this.accessLines.push(...lines.filter((l) => / HTTP\/[0-9.]+" [0-9]{3} /.test(l)));
    };
    p.stdout?.on('data', keep);
    p.stderr?.on('data', keep);
    await waitFor(async () => {
      if (p.exitCode !== null) throw new Error(`docker-registry exited with ${p.exitCode}: ${this.output}`);
      const status = await probeStatus(`${this.url}/v2/`);
      return status === 200 || status === 401;
    }, 15_000, `registry ${this.host} to answer`);
  }

  async stop(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise<void>((r) => p.once('exit', () => r()));
    p.kill('SIGTERM');
    const t = setTimeout(() => p.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(t);
  }
}

/** GET a URL (HTTPS without verification: readiness only); undefined when nothing answers. */
function probeStatus(url: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const req = (url.startsWith('https:') ? httpsGet : httpGet)(url, { rejectUnauthorized: false }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('error', () => resolve(undefined));
  });
}

/** A self-signed certificate for 127.0.0.1 (openssl), for a TLS registry. */
export async function makeLoopbackCert(dir: string): Promise<{ certFile: string; keyFile: string }> {
  const certFile = join(dir, 'tls-cert.pem');
  const keyFile = join(dir, 'tls-key.pem');
  await execFileP('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1']);
  return { certFile, keyFile };
}

/** Polls `check` until it returns true, at most `ms`; no fixed sleeps. */
export async function waitFor(check: () => Promise<boolean> | boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  let delay = 10;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 200);
  }
}

export { freePort };

// ---------------------------------------------------------------------------------------------------------
// skopeo, the independent checker

export async function skopeo(args: string[]): Promise<string> {
  const { stdout } = await execFileP('skopeo', args, { maxBuffer: 64 * 1024 * 1024 });
  return stdout;
}

/** The raw manifest bytes at a reference, as skopeo sees them. */
export async function skopeoRaw(ref: string, creds?: string): Promise<{ bytes: Buffer; digest: string; json: Record<string, unknown> }> {
  const { stdout } = await execFileP('skopeo', ['inspect', '--raw', '--tls-verify=false', ...(creds ? ['--creds', creds] : []), `docker://${ref}`], {
    encoding: 'buffer',
    maxBuffer: 64 * 1024 * 1024,
  });
  const bytes = stdout;
  return { bytes, digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}`, json: JSON.parse(bytes.toString('utf8')) as Record<string, unknown> };
}

/** The image config a client on `platform` gets through the index (skopeo --override-*). */
export async function skopeoConfigFor(ref: string, platform: { os: string; arch: string; variant?: string }, creds?: string): Promise<Record<string, unknown>> {
  const args = ['--override-os', platform.os, '--override-arch', platform.arch];
  if (platform.variant) args.push('--override-variant', platform.variant);
  const out = await skopeo([...args, 'inspect', '--config', '--tls-verify=false', ...(creds ? ['--creds', creds] : []), `docker://${ref}`]);
  return JSON.parse(out) as Record<string, unknown>;
}

/**
 * The manifest digest a client on `platform` resolves through the index: skopeo picks the instance and copies
 * it to a `dir:` layout (which stores the manifest bytes unchanged); we hash what it wrote.
 */
export async function skopeoDigestFor(ref: string, platform: { os: string; arch: string; variant?: string }): Promise<string> {
  const args = ['--override-os', platform.os, '--override-arch', platform.arch];
  if (platform.variant) args.push('--override-variant', platform.variant);
  const dir = await mkdtemp(join(tmpdir(), 'kiln-pick-'));
  try {
    await skopeo([...args, 'copy', '-q', '--src-tls-verify=false', `docker://${ref}`, `dir:${dir}`]);
    return `sha256:${createHash('sha256').update(await readFile(join(dir, 'manifest.json'))).digest('hex')}`;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Token server double: issues JWTs the way Docker Hub's auth service does (distribution's token spec),
// after checking Basic credentials, and records every request so tests can assert on scopes.

export interface TokenRequest {
  user: string | undefined;
  service: string | null;
  scopes: string[];
}

function base32(bytes: Buffer): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  let out = '';
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += alphabet[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += alphabet[(value << (5 - bits)) & 31];
  return out;
}

/** libtrust's key ID: base32 of the first 240 bits of sha256(DER SubjectPublicKeyInfo), in groups of 4. */
function libtrustKeyId(spkiDer: Buffer): string {
  const b = base32(createHash('sha256').update(spkiDer).digest().subarray(0, 30));
  return (b.match(/.{4}/g) ?? []).join(':');
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');

export class TokenServer {
  readonly requests: TokenRequest[] = [];
  readonly service = 'kiln-test-registry';
  readonly issuer = 'kiln-test-token-issuer';
  private constructor(
    private readonly server: Server,
    readonly realm: string,
    readonly certFile: string,
  ) {}

  static async start(dir: string, users: Record<string, string>): Promise<TokenServer> {
    const keyFile = join(dir, 'key.pem');
    const certFile = join(dir, 'cert.pem');
    await mkdir(dir, { recursive: true });
    await execFileP('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=kiln-test-token']);
    const key = createPrivateKey(await readFile(keyFile));
    const kid = libtrustKeyId(createPublicKey(key).export({ type: 'spki', format: 'der' }));
    let ts: TokenServer | undefined;
    const server = createServer((req: IncomingMessage, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      const authz = req.headers.authorization ?? '';
      let user: string | undefined;
      if (authz.startsWith('Basic ')) {
        const [u, ...p] = Buffer.from(authz.slice(6), 'base64').toString('utf8').split(':');
        if (u === undefined || users[u] !== p.join(':')) {
          res.writeHead(401, { 'content-type': 'application/json' }).end('{"details":"bad credentials"}');
          ts?.requests.push({ user: `REJECTED:${u}`, service: url.searchParams.get('service'), scopes: url.searchParams.getAll('scope') });
          return;
        }
        user = u;
      }
      const scopes = url.searchParams.getAll('scope');
      ts?.requests.push({ user, service: url.searchParams.get('service'), scopes });
      if (!user) {
        res.writeHead(401, { 'content-type': 'application/json' }).end('{"details":"credentials required"}');
        return;
      }
      const access = scopes.map((s) => {
        const [type, ...rest] = s.split(':');
        const actions = (rest.pop() ?? '').split(',').filter((a) => a === 'pull' || a === 'push');
        return { type, name: rest.join(':'), actions };
      });
      const now = Math.floor(Date.now() / 1000);
      const header = { typ: 'JWT', alg: 'ES256', kid };
      const claims = { iss: ts?.issuer, sub: user, aud: ts?.service, exp: now + 300, nbf: now - 10, iat: now, jti: randomUUID(), access };
      const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
      const sig = sign('sha256', Buffer.from(signingInput), { key, dsaEncoding: 'ieee-p1363' });
      const token = `${signingInput}.${b64url(sig)}`;
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token, access_token: token, expires_in: 300 }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const { port } = server.address() as AddressInfo;
    ts = new TokenServer(server, `http://127.0.0.1:${port}/token`, certFile);
    return ts;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

// ---------------------------------------------------------------------------------------------------------
// A provenance-style per-arch index, the way BuildKit pushes one by default: the image plus an
// `unknown/unknown` attestation manifest that points at it. Written as an OCI layout next to the image
// buildah wrote there, then copied to a registry by skopeo with digests preserved.

export async function writeProvenanceIndex(
  h: Harness,
  image: string,
  platform: { os: string; architecture: string; variant?: string },
  opts: { artifact?: boolean } = {},
): Promise<{ layout: string; imageDigest: string; attestationDigest: string }> {
  const layout = await h.tempDir('kiln-layout-');
  const imageDigest = await h.buildahPush(image, `oci:${layout}:img`, 'oci');
  const put = async (bytes: Buffer): Promise<{ digest: string; size: number }> => {
    const hex = createHash('sha256').update(bytes).digest('hex');
    await mkdir(join(layout, 'blobs', 'sha256'), { recursive: true });
    await writeFile(join(layout, 'blobs', 'sha256', hex), bytes);
    return { digest: `sha256:${hex}`, size: bytes.length };
  };
  const imageBytes = await readFile(join(layout, 'blobs', 'sha256', imageDigest.slice(7)));
  const statement = Buffer.from(JSON.stringify({ _type: 'https://in-toto.io/Statement/v0.1', predicateType: 'https://slsa.dev/provenance/v0.2', subject: [{ name: 'img', digest: { sha256: imageDigest.slice(7) } }], predicate: { builder: { id: 'kiln-test' } } }));
  const layer = await put(statement);
  const inToto = { mediaType: 'application/vnd.in-toto+json', ...layer, annotations: { 'in-toto.io/predicate-type': 'https://slsa.dev/provenance/v0.2' } };
  let attBody: Record<string, unknown>;
  if (opts.artifact) {
    // BuildKit ≥ 0.32: an OCI artifact with the empty config and a subject pointing at the image.
    const empty = await put(Buffer.from('{}'));
    attBody = {
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      artifactType: 'application/vnd.docker.attestation.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.empty.v1+json', ...empty },
      layers: [inToto],
      subject: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: imageDigest, size: imageBytes.length },
    };
  } else {
    const config = await put(Buffer.from(JSON.stringify({ architecture: 'unknown', os: 'unknown', config: {}, rootfs: { type: 'layers', diff_ids: [layer.digest] } })));
    attBody = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config }, layers: [inToto] };
  }
  const att = await put(Buffer.from(JSON.stringify(attBody)));
  const index = await put(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: [
          { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: imageDigest, size: imageBytes.length, platform },
          {
            mediaType: 'application/vnd.oci.image.manifest.v1+json',
            ...att,
            platform: { architecture: 'unknown', os: 'unknown' },
            annotations: { 'vnd.docker.reference.digest': imageDigest, 'vnd.docker.reference.type': 'attestation-manifest' },
          },
        ],
      }),
    ),
  );
  await writeFile(
    join(layout, 'index.json'),
    JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.index.v1+json', ...index, annotations: { 'org.opencontainers.image.ref.name': 'prov' } }] }),
  );
  return { layout, imageDigest, attestationDigest: att.digest };
}

/** Copies an OCI layout's `prov` index to a registry with digests preserved; returns the index digest. */
export async function pushLayoutIndex(h: Harness, layout: string, dest: string): Promise<string> {
  const dir = await h.tempDir('kiln-digest-');
  const file = join(dir, 'digest');
  await skopeo(['copy', '-q', '--all', '--preserve-digests', '--dest-tls-verify=false', '--digestfile', file, `oci:${layout}:prov`, `docker://${dest}`]);
  return (await readFile(file, 'utf8')).trim();
}

// ---------------------------------------------------------------------------------------------------------
// Raw distribution-API writes for fixtures no builder makes (plain fetch, independent of kiln's client).

export async function rawPushBlob(host: string, repo: string, bytes: Buffer): Promise<{ digest: string; size: number }> {
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  const start = await fetch(`http://${host}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  await start.arrayBuffer();
  if (start.status !== 202) throw new Error(`upload start answered ${start.status}`);
  const loc = new URL(start.headers.get('location') ?? '', `http://${host}`);
  loc.searchParams.set('digest', digest);
  const put = await fetch(loc, { method: 'PUT', body: new Uint8Array(bytes), headers: { 'content-type': 'application/octet-stream' } });
  await put.arrayBuffer();
  if (put.status !== 201) throw new Error(`blob PUT answered ${put.status}`);
  return { digest, size: bytes.length };
}

export async function rawPutManifest(host: string, repo: string, ref: string, body: unknown, mediaType: string): Promise<string> {
  const bytes = Buffer.from(JSON.stringify(body));
  const r = await fetch(`http://${host}/v2/${repo}/manifests/${ref}`, { method: 'PUT', body: new Uint8Array(bytes), headers: { 'content-type': mediaType } });
  const text = await r.text();
  if (r.status !== 201) throw new Error(`manifest PUT answered ${r.status}: ${text}`);
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}
