/**
 * The ci guest image end to end, with real parts only: the image built by `kiln image build --profile ci`
 * (once per machine and inputs, see ci-image-support.ts), real QEMU under TCG, a real docker-registry on
 * loopback, skopeo as the independent checker. The seeds' workflow: in a fresh VM per architecture, Docker
 * builds a FROM-scratch image from a local context and pushes it by digest to the host's registry through
 * the VM's network path (QEMU user networking, host at 10.0.2.2, passed in as the registry mirror so Docker
 * may use plain HTTP); the host collects both digests, `kiln manifest create` combines them and skopeo
 * resolves each platform. Then disk hygiene: a job that fills its disk fails clearly and leaves nothing.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { Arch } from '../../src/core/arch.ts';
import { makeImageStore, type ImageManifest } from '../../src/image/store.ts';
import { ensureScratchBase } from '../../src/vm/disks.ts';
import { Harness, skopeo, type Registry } from '../oci/harness.ts';
import { assertNoLeaks, KILN_BIN, makeTestDataDir, runKiln, SHARED_DIR, type CliResult } from '../support/kiln.ts';
import { ensureCiImage } from './ci-image-support.ts';

const MiB = 1024 * 1024;
let data: { dir: string; cleanup(): void };
let harness: Harness;
let registry: Registry;
const images: Partial<Record<Arch, ImageManifest>> = {};
const pushed: Partial<Record<Arch, string>> = {};

before(async () => {
  data = makeTestDataDir();
  harness = new Harness();
  registry = await harness.startRegistry();
});

after(async () => {
  await harness.cleanup();
  assertNoLeaks(data.dir);
  data.cleanup();
});

function runCli(args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [KILN_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    p.stdout.on('data', (d: Buffer) => out.push(d));
    p.stderr.on('data', (d: Buffer) => err.push(d));
    p.on('close', (code, signal) => resolve({ code, signal, stdout: Buffer.concat(out), stderr: Buffer.concat(err) }));
  });
}

const text = (r: CliResult) => `exit ${r.code}\n--- stdout\n${r.stdout.toString()}\n--- stderr\n${r.stderr.toString().split('\n').slice(-40).join('\n')}`;
const field = (out: string, name: string) => new RegExp(`^${name}=(.*)$`, 'm').exec(out)?.[1];

function image(arch: Arch): ImageManifest {
  images[arch] ??= ensureCiImage(arch);
  return images[arch];
}

test('the ci image: read-only root disk in the store, its size reported, kiln-init and Docker inside', { timeout: 20 * 60_000 }, async () => {
  const m = image('amd64');
  assert.equal(m.profile, 'ci');
  assert.ok(m.rootDisk, 'a ci image has a root disk');
  assert.ok(m.rootDisk.size > 100 * MiB && m.rootDisk.size < 2048 * MiB, `root disk size ${m.rootDisk.size}`);
  assert.ok(m.packages.some((p) => p.startsWith('docker.io=')) && m.packages.some((p) => p.startsWith('buildah=')), 'package list names docker.io and buildah');
  const ls = await runKiln(data.dir, ['image', 'ls']);
  assert.equal(ls.code, 0, text(ls));
  assert.match(ls.stdout.toString(), new RegExp(`${m.digest.slice(7, 19)}\\s+amd64\\s+ci\\s`));
});

test('amd64: Docker answers before the job starts, with its data on the per-VM disk', { timeout: 20 * 60_000 }, async () => {
  image('amd64');
  const script = [
    'docker info --format "driver={{.Driver}}" ',
    'docker info --format "arch={{.Architecture}}"',
    'echo "dockerdisk=$(df -P /var/lib/docker | tail -n 1 | cut -d" " -f1)"',
    'echo "rootdisk=$(df -P / | tail -n 1 | cut -d" " -f1)"',
    'echo "tools=$(git --version >/dev/null && buildah --version >/dev/null && cc --version >/dev/null && curl --version >/dev/null && echo ok)"',
  ].join('; ');
  const r = await runKiln(data.dir, ['run', '--image', image('amd64').digest, '--memory', '1G', '--timeout', '15m', '--', 'sh', '-c', script]);
  assert.equal(r.code, 0, text(r));
  const out = r.stdout.toString();
  assert.equal(field(out, 'driver'), 'overlay2', text(r));
  assert.equal(field(out, 'arch'), 'x86_64', text(r));
  assert.equal(field(out, 'dockerdisk'), '/dev/vda', `Docker's data must be on the scratch disk\n${text(r)}`);
  assert.equal(field(out, 'rootdisk'), '/dev/vdb', text(r));
  assert.equal(field(out, 'tools'), 'ok', text(r));
  assertNoLeaks(data.dir);
});

/** Builds FROM scratch + busybox in a fresh VM, runs it, pushes it to the host registry; returns the digest. */
async function buildAndPush(arch: Arch): Promise<string> {
  image(arch);
  const reg = `10.0.2.2:${registry.host.split(':')[1]}`;
  const script = [
    'set -e',
    'reg=$1; tag=$2',
    'docker info --format "mirrors={{json .RegistryConfig.Mirrors}}"',
    'docker info --format "arch={{.Architecture}}"',
    'mkdir -p /work/ctx && cp /bin/busybox /work/ctx/busybox',
    'printf "FROM scratch\\nCOPY busybox /bin/busybox\\nENTRYPOINT [\\"/bin/busybox\\"]\\nCMD [\\"echo\\", \\"hello from kiln\\"]\\n" > /work/ctx/Dockerfile',
    'docker build -q -t "$reg/kiln/hello:$tag" /work/ctx >&2',
    'echo "run=$(docker run --rm --network none "$reg/kiln/hello:$tag")"',
    'docker push "$reg/kiln/hello:$tag" >&2',
    'echo "digest=$(docker inspect --format "{{index .RepoDigests 0}}" "$reg/kiln/hello:$tag" | sed "s/.*@//")"',
  ].join('\n');
  const r = await runKiln(data.dir, [
    // The test's registry listens on the host's loopback, which guest egress refuses unless allowlisted.
    'run', '--image', image(arch).digest, '--arch', arch, '--cpus', '2', '--memory', '1G', '--timeout', '20m', '--network', 'user', '--egress-allow', '127.0.0.1/32', '--registry-mirror', reg,
    '--', 'sh', '-c', script, 'sh', reg, arch,
  ]);
  assert.equal(r.code, 0, text(r));
  const out = r.stdout.toString();
  assert.equal(field(out, 'mirrors'), `["http://${reg}/"]`, `the mirror the host passed in is configured at boot\n${text(r)}`);
  assert.equal(field(out, 'arch'), arch === 'amd64' ? 'x86_64' : 'aarch64', text(r));
  assert.equal(field(out, 'run'), 'hello from kiln', text(r));
  const digest = field(out, 'digest') ?? '';
  assert.match(digest, /^sha256:[0-9a-f]{64}$/, text(r));
  // The host registry holds exactly that manifest.
  const raw = Buffer.from(await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/kiln/hello@${digest}`]));
  assert.equal(`sha256:${createHash('sha256').update(raw).digest('hex')}`, digest);
  assertNoLeaks(data.dir);
  return digest;
}

test('amd64: build FROM scratch in the VM, push by digest to the host registry', { timeout: 25 * 60_000 }, async () => {
  pushed.amd64 = await buildAndPush('amd64');
});

test('arm64 (emulated): the same build and push', { timeout: 40 * 60_000 }, async () => {
  pushed.arm64 = await buildAndPush('arm64');
});

test('kiln manifest create combines both digests; skopeo resolves each platform', { timeout: 5 * 60_000 }, async (t) => {
  if (!pushed.amd64 || !pushed.arm64) {
    assert.fail(`both architectures must have pushed first (amd64: ${pushed.amd64 ?? 'none'}, arm64: ${pushed.arm64 ?? 'none'})`);
  }
  const repo = `${registry.host}/kiln/hello`;
  // `kiln manifest create` keeps no data directory (no --data-dir).
  const r = await runCli(['manifest', 'create', repo, '--tag', 'multi', pushed.amd64, pushed.arm64]);
  assert.equal(r.code, 0, text(r));
  const index = JSON.parse(await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${repo}:multi`])) as {
    manifests: { digest: string; platform: { architecture: string; os: string } }[];
  };
  const byArch = new Map(index.manifests.map((d) => [d.platform.architecture, d]));
  assert.equal(byArch.get('amd64')?.digest, pushed.amd64);
  assert.equal(byArch.get('arm64')?.digest, pushed.arm64);
  for (const arch of ['amd64', 'arm64'] as const) {
    await t.test(arch, async () => {
      // skopeo resolves the tag's index for this platform; its Digest field names the index itself, so the
      // child is identified by its layers (each architecture's busybox differs) against the pushed image.
      type Info = { Digest: string; Architecture: string; Layers: string[] };
      const info = JSON.parse(await skopeo(['inspect', '--tls-verify=false', '--override-os', 'linux', '--override-arch', arch, `docker://${repo}:multi`])) as Info;
      const child = JSON.parse(await skopeo(['inspect', '--tls-verify=false', `docker://${repo}@${pushed[arch]}`])) as Info;
      assert.equal(info.Architecture, arch);
      assert.equal(child.Architecture, arch);
      assert.deepEqual(info.Layers, child.Layers);
    });
  }
});

test('disk hygiene: a job that fills its disk fails clearly; Docker data and files do not outlive the VM; host files untouched', { timeout: 20 * 60_000 }, async () => {
  const m = image('amd64');
  const disk = 256 * MiB;
  const base = await ensureScratchBase(join(SHARED_DIR, 'cache', 'disks'), disk);
  const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');
  const baseBefore = sha(base);
  const script = [
    'echo "images=$(docker images -q | wc -l)"',
    'echo "work=$(ls -A /work | wc -l)"',
    'echo "disk=$(df -Pk /work | tail -n 1 | tr -s " " | cut -d" " -f2)"',
    'dd if=/dev/zero of=/work/fill bs=1M',
  ].join('; ');
  const r = await runKiln(data.dir, ['run', '--image', m.digest, '--memory', '1G', '--disk', '256M', '--timeout', '15m', '--', 'sh', '-c', script]);
  const out = r.stdout.toString();
  const err = r.stderr.toString();
  assert.equal(r.code, 1, `dd fails with ENOSPC and the job's exit code comes back\n${text(r)}`);
  assert.match(err, /No space left on device/, text(r));
  assert.match(err, /kiln: the job failed with the VM's disk full/, text(r));
  // A fresh VM: no image from the earlier VMs' docker builds, nothing in /work.
  assert.equal(field(out, 'images'), '0', text(r));
  assert.equal(field(out, 'work'), '0', text(r));
  // The guest's disk is the 256M it asked for, not the host's.
  const kib = Number(field(out, 'disk'));
  assert.ok(kib > 200 * 1024 && kib <= 256 * 1024, `guest disk ${kib} KiB\n${text(r)}`);
  // The shared read-only bases are unchanged and the VM left nothing behind.
  assert.equal(sha(base), baseBefore, 'the scratch base disk was written to');
  await makeImageStore(SHARED_DIR).verify(m);
  assertNoLeaks(data.dir);
});

test('reproducible: building the amd64 ci image again from the same packages gives the same digest', { timeout: 20 * 60_000 }, async (t) => {
  const first = image('amd64');
  const r = await runKiln(data.dir, ['image', 'build', '--profile', 'ci', '--arch', 'amd64']);
  assert.equal(r.code, 0, text(r));
  assert.match(r.stderr.toString(), /reproducibility: /, 'the build says what is reproducible');
  const digest = r.stdout.toString().trim().split('\n').pop() ?? '';
  const second = makeImageStore(SHARED_DIR).list().find((x) => x.digest === digest);
  assert.ok(second, `the build printed ${digest}, which is not in the store`);
  if (JSON.stringify(second.packages) !== JSON.stringify(first.packages)) {
    // The archive moved on since the cached image was built (a dev machine's shared store): other inputs.
    const changed = second.packages.filter((p) => !first.packages.includes(p));
    t.skip(`the Debian archive serves other versions than when the cached image was built: ${changed.slice(0, 5).join(', ')}`);
    return;
  }
  assert.equal(digest, first.digest, 'same packages, same kernel, same kiln files: the digest must not change');
});
