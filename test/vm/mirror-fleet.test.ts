/**
 * The per-host registry mirror through the fleet path, as an operator runs it: one `kiln up` (server, local
 * agent, QEMU under TCG) with `--mirror-upstream URL` in front of a docker-registry playing Docker Hub and
 * `--mirror-upstream ghcr.io=URL` in front of a second one playing ghcr.io; ci-image jobs submitted through
 * `kiln jobs submit`. Both upstreams log every request they answer (distribution's access log), so the test
 * counts what reached them.
 *
 * VM 1, network closed (the default): `docker pull` by short name and by docker.io/… name, three pulls at once
 * (one image of several layers), `docker build` of a Dockerfile whose FROM comes from the mirror (the classic
 * builder and BuildKit), buildah pulls (short name and ghcr.io), a containerd pull, `docker pull ghcr.io/…`;
 * every digest checked; nothing else reachable (the host's loopback, the upstreams themselves, other guest
 * addresses and ports). The upstreams then show the mirror's fetch of each blob exactly once.
 * VM 2, network user (the egress filter on): pulls of the same images, three at once, and a BuildKit build
 * FROM an image by digest, are cache hits: by digest nothing reaches either upstream, by tag only the tag's
 * manifest lookup does (distribution's proxy always checks a tag upstream), never a blob; the host's loopback
 * is still refused by the egress filter.
 * Two VMs in all (the ci image boots in ~30-60 s under TCG), sharing one `kiln up`. On a saturated machine
 * (several TCG guests per core) a ci boot can pass the default 180 s boot limit: run with KILN_BOOT_TIMEOUT=12m.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { Host } from '../../src/core/host.ts';
import { killAll, spawnBuiltKiln, type KilnProcess } from '../agent/processes.ts';
import { Harness, freePort, skopeoRaw, waitFor, type Registry } from '../oci/harness.ts';
import { assertNoLeaks, hasBinary, KILN_BIN, KILN_NODE_ARGS, makeTestDataDir } from '../support/kiln.ts';
import { ensureCiImage } from './ci-image-support.ts';

const missing = ['docker-registry', 'buildah', 'skopeo', 'socat', 'nft', 'debootstrap'].filter((b) => !hasBinary(b));
const skip = missing.length > 0 ? `${missing.join(', ')} not installed (kiln setup --with-test-deps)` : process.getuid?.() !== 0 ? 'needs root (the ci image build, guest egress)' : false;

const oci = new Harness();
const data = makeTestDataDir();
let hub: Registry;
let ghcr: Registry;
let up: KilnProcess;
let env: Record<string, string>;
let apiPort: number;
let mirrorPort: number;
let imageDigest: string;
/** Manifest digest and blob digests of each seeded image, by its name in the guest. */
const seeded: Record<string, { repo: string; digest: string; blobs: string[] }> = {};
let requestsBeforeVm2 = { hub: 0, ghcr: 0 };

/** Two free ports in a row (the ghcr.io mirror listens on the next port after Docker Hub's). */
async function freePortPair(): Promise<number> {
  for (;;) {
    const p = await freePort();
    if (p >= 65535) continue;
    const probe = await new Promise<boolean>((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(false));
      s.listen(p + 1, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (probe) return p;
  }
}

async function seed(reg: Registry, repoTag: string, name: string, image: string): Promise<void> {
  await oci.buildahPush(image, `docker://${reg.host}/${repoTag}`, 'oci');
  const m = await skopeoRaw(`${reg.host}/${repoTag}`);
  const j = m.json as { config: { digest: string }; layers: { digest: string }[] };
  seeded[name] = { repo: repoTag.split(':')[0]!, digest: m.digest, blobs: [j.config.digest, ...j.layers.map((l) => l.digest)] };
}

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [...KILN_NODE_ARGS, KILN_BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Submits a ci-image job through the CLI and follows it to its end. */
function submit(network: 'none' | 'user', script: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return cli(['jobs', 'submit', '--image', imageDigest, '--cpus', '2', '--memory', '1G', '--disk', '2G', '--timeout', '25m', '--network', network, '--', 'sh', '-c', script]);
}

const field = (out: string, name: string) => new RegExp(`^${name}=(.*)$`, 'm').exec(out)?.[1];
const show = (r: { code: number | null; stdout: string; stderr: string }) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr.split('\n').slice(-60).join('\n')}`;

/** GETs of each blob digest the registry answered, counted. */
function blobGets(reg: Registry, from = 0): Map<string, number> {
  const n = new Map<string, number>();
  for (const r of reg.requests().slice(from)) {
    const m = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(r.path);
    if (r.method === 'GET' && m) n.set(m[1]!, (n.get(m[1]!) ?? 0) + 1);
  }
  return n;
}

/** The closed-network VM's output, for the BuildKit check reported apart. */
let vm1Output = '';

void describe('the registry mirror through kiln up', { skip }, () => {
  before(async () => {
    imageDigest = ensureCiImage('amd64').digest;
    hub = await oci.startRegistry({ accessLog: true });
    ghcr = await oci.startRegistry({ accessLog: true });
    const small = (bytes = 256 * 1024) => oci.buildImage({ arch: 'amd64', bytes });
    await seed(hub, 'library/hello:1', 'hello', await small());
    await seed(hub, 'library/base:1', 'base', await small());
    await seed(hub, 'library/kitbase:1', 'kitbase', await small());
    await seed(hub, 'library/bud:1', 'bud', await small());
    await seed(hub, 'library/p1:1', 'p1', await oci.buildLayeredImage({ arch: 'amd64', layers: 3, bytesPerLayer: 256 * 1024 }));
    await seed(hub, 'library/p2:1', 'p2', await small());
    await seed(hub, 'team/p3:1', 'p3', await small());
    await seed(ghcr, 'kiln/tool:1', 'tool', await small());
    requestsBeforeVm2 = { hub: hub.requests().length, ghcr: ghcr.requests().length };

    apiPort = await freePort();
    mirrorPort = await freePortPair();
    up = spawnBuiltKiln(
      ['up', '--listen', `127.0.0.1:${apiPort}`, '--data-dir', data.dir, '--mirror-upstream', hub.url, '--mirror-upstream', `ghcr.io=${ghcr.url}`, '--mirror-listen', `127.0.0.1:${mirrorPort}`],
      { KILN_LOG_LEVEL: 'info', KILN_MIRROR_STATUS_INTERVAL: '1s' },
    );
    await up.waitForOutput(/kiln is up at http:\/\/127\.0\.0\.1:\d+/, 90_000);
    env = { KILN_SERVER: `http://127.0.0.1:${apiPort}`, KILN_TOKEN: readFileSync(`${data.dir}/admin.token`, 'utf8').trim() };
  });

  after(async () => {
    await up?.kill('SIGTERM');
    await killAll();
    await oci.cleanup();
    assert.deepEqual(oci.livePids(), []);
    assertNoLeaks(data.dir);
    data.cleanup();
  });

  void test('both mirrors are supervised, healthy and reported in the hosts API', { timeout: 60_000 }, async () => {
    await waitFor(
      async () => {
        const r = await cli(['hosts', 'ls', '--json']);
        const m = r.code === 0 ? (JSON.parse(r.stdout) as Host[])[0]?.mirror : undefined;
        return m?.healthy === true && m.others?.[0]?.healthy === true;
      },
      30_000,
      'both mirrors to be reported healthy',
    );
    const m = (JSON.parse((await cli(['hosts', 'ls', '--json'])).stdout) as Host[])[0]!.mirror!;
    assert.deepEqual([m.registry, m.upstream, m.address, m.guestAddress], ['docker.io', hub.url, `127.0.0.1:${mirrorPort}`, '10.0.2.100:5000']);
    assert.deepEqual(
      m.others?.map((o) => [o.registry, o.upstream, o.address, o.guestAddress]),
      [['ghcr.io', ghcr.url, `127.0.0.1:${mirrorPort + 1}`, '10.0.2.101:5000']],
    );
  });

  void test('network closed: docker pull (short and docker.io names, three at once), docker build FROM, buildah, containerd and ghcr.io pulls all come through the mirror; nothing else is reachable', { timeout: 30 * 60_000 }, async () => {
    const d = (n: string) => seeded[n]!.digest;
    const script = [
      // ok CMD...: "ok" or the failure's last lines; ok runs in $(...), so it names CMD's output file in
      // /tmp/last-ok for the next line to read.
      'ok() { o=$(mktemp); echo "$o" > /tmp/last-ok; if "$@" > "$o" 2>&1; then echo ok; else echo "failed: $(tail -n 3 "$o" | tr "\\n" " ")"; fi; }',
      'digest() { docker image inspect --format "{{range .RepoDigests}}{{.}} {{end}}" "$1" 2>/dev/null | tr " " "\\n" | grep -m1 "@" | sed "s/.*@//"; }',
      // Docker Hub by short name, then by its full name.
      'echo "pull_short=$(ok docker pull hello:1)"',
      'echo "digest_short=$(digest hello:1)"',
      'echo "pull_full=$(ok docker pull docker.io/library/kitbase:1)"',
      'echo "digest_full=$(digest kitbase:1)"',
      // Three pulls at once (p1 has three layers, downloaded in parallel too).
      'n=0; for i in p1:1 p2:1 team/p3:1; do n=$((n + 1)); (echo "par_$(echo ${i%%:*} | tr / _)=$(ok docker pull $i)" > /tmp/par-$n.txt) & done; wait',
      'cat /tmp/par-*.txt',
      'echo "digest_p1=$(digest p1:1) digest_p2=$(digest p2:1) digest_p3=$(digest team/p3:1)" | tr " " "\\n"',
      // docker build whose FROM comes from the mirror: the classic builder, then BuildKit (another base image).
      'mkdir -p /work/ctx && echo built > /work/ctx/note.txt',
      'printf "FROM base:1\\nCOPY note.txt /note.txt\\n" > /work/ctx/Dockerfile',
      'echo "build_classic=$(ok env DOCKER_BUILDKIT=0 docker build -t built:classic /work/ctx)"',
      'echo "digest_base=$(digest base:1)"',
      'echo "built_classic_layers=$(docker image inspect --format "{{len .RootFS.Layers}}" built:classic)"',
      'mkdir -p /work/ctx2 && echo built > /work/ctx2/note.txt && printf "FROM bud:1\\nCOPY note.txt /note.txt\\n" > /work/ctx2/Dockerfile',
      'echo "build_buildkit=$(ok env DOCKER_BUILDKIT=1 docker build --progress=plain -t built:bk /work/ctx2)"',
      // The base image BuildKit resolved (its log names it by digest), from its own log.
      'echo "buildkit_from=$(grep -o "FROM docker.io/library/bud:1@sha256:[0-9a-f]*" "$(cat /tmp/last-ok)" | head -n 1 | sed "s/.*@//")"',
      'echo "built_buildkit_layers=$(docker image inspect --format "{{len .RootFS.Layers}}" built:bk 2>/dev/null)"',
      // buildah: a short name (registries.conf: docker.io), and ghcr.io through its own mirror.
      'echo "buildah_short=$(ok buildah pull -q bud:1)"',
      `echo "buildah_short_digest=$(buildah images --format '{{.Digest}}' docker.io/library/bud:1 2>/dev/null)"`,
      'echo "buildah_ghcr=$(ok buildah pull -q ghcr.io/kiln/tool:1)"',
      `echo "buildah_ghcr_digest=$(buildah images --format '{{.Digest}}' ghcr.io/kiln/tool:1 2>/dev/null)"`,
      // containerd through its hosts.toml.
      'echo "ctr_pull=$(ok ctr -n kiln images pull --hosts-dir /etc/containerd/certs.d docker.io/library/hello:1)"',
      'echo "ctr_digest=$(ctr -n kiln images ls | grep -o "sha256:[0-9a-f]*" | head -n 1)"',
      // Docker pulls from ghcr.io: the name points at the ghcr.io mirror in this guest.
      'echo "pull_ghcr=$(ok docker pull ghcr.io/kiln/tool:1)"',
      'echo "digest_ghcr=$(digest ghcr.io/kiln/tool:1)"',
      // Nothing else: the host's loopback (the API, the upstreams themselves), other ports and addresses.
      `for t in 10.0.2.2:${apiPort} 10.0.2.2:${hub.host.split(':')[1]} 10.0.2.2:${mirrorPort} 10.0.2.100:22 10.0.2.101:22 10.0.2.102:5000 10.0.2.3:53 1.1.1.1:80; do`,
      '  (if curl -s -o /dev/null -m 5 "http://$t/"; then echo "reach_$t=open"; else echo "reach_$t=closed"; fi) &',
      'done; wait',
      `echo "reach_mirror=$(curl -s -o /dev/null -w '%{http_code}' -m 10 http://10.0.2.100:5000/v2/)"`,
      `echo "reach_ghcr_mirror=$(curl -s -o /dev/null -w '%{http_code}' -m 10 http://10.0.2.101:5000/v2/)"`,
      'echo "ip_route=$(ip route | tr "\\n" ";")"',
    ].join('\n');
    const r = await submit('none', script);
    const out = r.stdout;
    vm1Output = show(r);
    // What reached the upstreams from here on is the second VM's, even if this test fails below.
    const fromVm1 = requestsBeforeVm2;
    requestsBeforeVm2 = { hub: hub.requests().length, ghcr: ghcr.requests().length };
    assert.equal(r.code, 0, show(r));
    for (const k of ['pull_short', 'pull_full', 'par_p1', 'par_p2', 'par_team_p3', 'build_classic', 'buildah_short', 'buildah_ghcr', 'ctr_pull', 'pull_ghcr']) {
      assert.equal(field(out, k), 'ok', `${k}\n${show(r)}`);
    }
    assert.equal(field(out, 'digest_short'), d('hello'), show(r));
    assert.equal(field(out, 'digest_full'), d('kitbase'), show(r));
    assert.equal(field(out, 'digest_p1'), d('p1'), show(r));
    assert.equal(field(out, 'digest_p2'), d('p2'), show(r));
    assert.equal(field(out, 'digest_p3'), d('p3'), show(r));
    assert.equal(field(out, 'digest_base'), d('base'), show(r));
    assert.equal(field(out, 'built_classic_layers'), '2', show(r));
    assert.equal(field(out, 'buildah_short_digest'), d('bud'), show(r));
    assert.equal(field(out, 'buildah_ghcr_digest'), d('tool'), show(r));
    assert.equal(field(out, 'ctr_digest'), d('hello'), show(r));
    assert.equal(field(out, 'digest_ghcr'), d('tool'), show(r));
    assert.equal(field(out, 'reach_mirror'), '200', show(r));
    assert.equal(field(out, 'reach_ghcr_mirror'), '200', show(r));
    const reach = [...out.matchAll(/^reach_([0-9.:]+)=(\w+)$/gm)].map((m) => `${m[1]} ${m[2]}`);
    assert.equal(reach.length, 8, show(r));
    for (const line of reach) assert.match(line, / closed$/, `only the mirrors are reachable\n${show(r)}`);

    // Each blob of every image pulled crossed from its upstream to the mirror exactly once.
    const hubGets = blobGets(hub, fromVm1.hub);
    const ghcrGets = blobGets(ghcr, fromVm1.ghcr);
    for (const [name, s] of Object.entries(seeded)) {
      const gets = name === 'tool' ? ghcrGets : hubGets;
      for (const b of s.blobs) assert.equal(gets.get(b), 1, `${name}'s blob ${b} fetched from its upstream once (got ${gets.get(b) ?? 0})`);
    }
    assert.equal([...hubGets.keys()].filter((b) => !Object.values(seeded).some((s) => s.blobs.includes(b))).length, 0, 'no other blob was fetched');
    assert.ok(hub.requests().slice(fromVm1.hub, requestsBeforeVm2.hub).every((q) => q.method === 'GET' || q.method === 'HEAD'), 'the mirror only reads its upstream');
  });

  // Docker 20.10's BuildKit reads the mirror's plain-HTTP setting from the `http://` form of the daemon's
  // insecure-registries entry (docs/mirror.md); a bare host:port made it try HTTPS on the mirror and fail.
  // The network is closed, so the base image can only have come through the mirror; BuildKit's own log names
  // the manifest it resolved, which must be the upstream's, and bud's blobs were fetched upstream once (above).
  void test('network closed: docker build with BuildKit, FROM served by the mirror', () => {
    assert.ok(vm1Output, 'the closed-network VM ran');
    assert.equal(field(vm1Output, 'build_buildkit'), 'ok', vm1Output);
    assert.equal(field(vm1Output, 'buildkit_from'), seeded.bud!.digest, vm1Output);
    assert.equal(field(vm1Output, 'built_buildkit_layers'), '2', vm1Output);
  });

  // With network user the VM's egress filter is on: the forwards work through it because it lets QEMU's own
  // loopback socket pair (libslirp makes one per forwarded connection) through (src/vm/egress.ts).
  void test('network user, a second VM: the same pulls (three at once) and a BuildKit build are cache hits (by digest nothing reaches the upstreams, by tag no blob does); the host stays refused', { timeout: 30 * 60_000 }, async () => {
    const d = (n: string) => seeded[n]!.digest;
    const script = [
      'ok() { o=$(mktemp); if "$@" > "$o" 2>&1; then echo ok; else echo "failed: $(tail -n 3 "$o" | tr "\\n" " ")"; fi; }',
      // Three pulls by digest at once.
      `(echo "by_digest=$(ok docker pull hello@${d('hello')})" > /tmp/par-1.txt) &`,
      `(echo "p2_by_digest=$(ok docker pull p2@${d('p2')})" > /tmp/par-2.txt) &`,
      `(echo "p3_by_digest=$(ok docker pull team/p3@${d('p3')})" > /tmp/par-3.txt) &`,
      'wait; cat /tmp/par-*.txt',
      `echo "ghcr_by_digest=$(ok docker pull ghcr.io/kiln/tool@${d('tool')})"`,
      'echo "by_tag=$(ok docker pull p1:1)"',
      // BuildKit, its base image by digest.
      `mkdir -p /work/ctx && echo built > /work/ctx/note.txt && printf "FROM kitbase@${d('kitbase')}\\nCOPY note.txt /note.txt\\n" > /work/ctx/Dockerfile`,
      'echo "build_buildkit=$(ok env DOCKER_BUILDKIT=1 docker build -t built:bk /work/ctx)"',
      'echo "built_buildkit_layers=$(docker image inspect --format "{{len .RootFS.Layers}}" built:bk 2>/dev/null)"',
      `echo "p1_digest=$(docker image inspect --format '{{index .RepoDigests 0}}' p1:1 | sed 's/.*@//')"`,
      `echo "buildah_by_digest=$(ok buildah pull -q docker.io/library/bud@${d('bud')})"`,
      `echo "reach_host=$(if curl -s -o /dev/null -m 5 http://10.0.2.2:${apiPort}/; then echo open; else echo closed; fi)"`,
      `echo "reach_upstream=$(if curl -s -o /dev/null -m 5 http://10.0.2.2:${hub.host.split(':')[1]}/v2/; then echo open; else echo closed; fi)"`,
      `echo "reach_mirror=$(curl -s -o /dev/null -w '%{http_code}' -m 10 http://10.0.2.100:5000/v2/)"`,
    ].join('\n');
    const r = await submit('user', script);
    assert.equal(r.code, 0, show(r));
    for (const k of ['by_digest', 'p2_by_digest', 'p3_by_digest', 'ghcr_by_digest', 'by_tag', 'build_buildkit', 'buildah_by_digest']) assert.equal(field(r.stdout, k), 'ok', `${k}\n${show(r)}`);
    assert.equal(field(r.stdout, 'built_buildkit_layers'), '2', show(r));
    assert.equal(field(r.stdout, 'p1_digest'), d('p1'), show(r));
    assert.equal(field(r.stdout, 'reach_host'), 'closed', show(r));
    assert.equal(field(r.stdout, 'reach_upstream'), 'closed', show(r));
    assert.equal(field(r.stdout, 'reach_mirror'), '200', show(r));
    const hubNow = hub.requests().slice(requestsBeforeVm2.hub);
    const ghcrNow = ghcr.requests().slice(requestsBeforeVm2.ghcr);
    // distribution's proxy may probe its upstream's /v2/ (for an auth challenge) when it serves a request;
    // that carries no content. Everything else is counted.
    const content = (qs: typeof hubNow) => qs.filter((q) => q.path !== '/v2/').map((q) => `${q.method} ${q.path}`);
    assert.deepEqual(content(ghcrNow), [], 'a pull by digest of a cached image never reaches the upstream');
    assert.deepEqual(hubNow.filter((q) => q.path.includes('/blobs/')), [], 'no blob is fetched again');
    assert.deepEqual(
      content(hubNow).filter((x) => !x.endsWith('/library/p1/manifests/1')),
      [],
      `only the tag lookup of p1:1 reached the upstream: ${JSON.stringify(hubNow)}`,
    );
  });
});
