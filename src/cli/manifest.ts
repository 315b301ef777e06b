/** `kiln manifest create`: compose per-architecture images into one multi-arch index and push it. */
import { readFile, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { KilnError } from '../core/errors.ts';
import { makeDockerConfigCredentials, type Credential } from '../oci/auth.ts';
import { DEFAULT_COMPOSE_OPTIONS, type AttestationMode, type IndexType } from '../oci/compose.ts';
import { createManifest, manifestMetadata, type ManifestCreateEvent, type ManifestCreateRequest } from '../oci/manifest-create.ts';
import { formatPlatform } from '../oci/platform.ts';
import { parseImageRef } from '../oci/reference.ts';
import { RegistryClient } from '../oci/registry-client.ts';
import { ATTESTATION_MODES, INDEX_TYPES, parseAnnotationArgs, parseManifestSpecYaml, parseSourceArg, type ManifestSpec } from '../oci/spec-file.ts';
import type { HostConfigs } from '../oci/transport-policy.ts';
import type { Output } from './output.ts';

interface CreateFlags {
  tag: string[];
  file?: string;
  annotation: string[];
  indexType?: string;
  attestations?: string;
  created?: string;
  dryRun?: boolean;
  metadataFile?: string;
  allowMixed?: boolean;
  allowCrossRegistry?: boolean;
  allowDuplicatePlatforms?: boolean;
  forcePlatform?: boolean;
  plainHttp: string[];
  registryConfig?: string;
  uploadChunkSize?: string;
  concurrency?: string;
}

const collect = (v: string, prev: string[]) => [...prev, v];

/** The command's configuration: flags > environment > file > defaults. The only place it reads env. */
export interface ManifestCreateConfig {
  request: ManifestCreateRequest;
  hosts: HostConfigs;
  dockerConfigFile: string;
  explicitCredentials: Record<string, Credential>;
  metadataFile?: string;
  chunkSize?: number;
}

export async function loadManifestCreateConfig(target: string | undefined, sourceArgs: string[], flags: CreateFlags, env: NodeJS.ProcessEnv): Promise<ManifestCreateConfig> {
  let file: ManifestSpec = { tags: [], sources: [], annotations: {}, registries: {}, caFiles: {} };
  if (flags.file) {
    let text: string;
    try {
      text = await readFile(flags.file, 'utf8');
    } catch (e) {
      throw new KilnError('oci.spec_unreadable', `cannot read ${flags.file}: ${(e as Error).message}`, { cause: e, hint: 'check the path given to --file' });
    }
    file = await parseManifestSpecYaml(text, flags.file);
  }
  const enumFlag = <T extends string>(name: string, v: string | undefined, allowed: readonly T[]): T | undefined => {
    if (v === undefined) return undefined;
    if ((allowed as readonly string[]).includes(v)) return v as T;
    throw new KilnError('oci.flag_invalid', `--${name} "${v}" is not one of ${allowed.join(', ')}`, { hint: `use --${name} ${allowed[0]}` });
  };
  const hosts: HostConfigs = { ...file.registries };
  for (const [host, path] of Object.entries(file.caFiles)) {
    try {
      hosts[host] = { ...(hosts[host] ?? {}), ca: await readFile(resolve(path), 'utf8') };
    } catch (e) {
      throw new KilnError('oci.spec_invalid', `cannot read the CA file ${path} for ${host}`, { cause: e, hint: 'fix registry.<host>.ca in the file' });
    }
  }
  for (const h of flags.plainHttp) hosts[h] = { ...(hosts[h] ?? {}), plainHttp: true };
  const finalTarget = target ?? file.target;
  if (!finalTarget) {
    throw new KilnError('oci.target_missing', 'no target repository given', { hint: 'kiln manifest create REGISTRY/REPO --tag TAG SOURCE… (or target: in --file)' });
  }
  const sources = [...file.sources, ...sourceArgs.map((a, i) => parseSourceArg(a, file.sources.length + i + 1))];
  const explicitCredentials: Record<string, Credential> = {};
  if (env.KILN_REGISTRY_USERNAME && env.KILN_REGISTRY_PASSWORD !== undefined) {
    explicitCredentials[parseImageRef(`${finalTarget}`, 'target').registry] = { username: env.KILN_REGISTRY_USERNAME, password: env.KILN_REGISTRY_PASSWORD };
  }
  const dockerConfigDir = env.DOCKER_CONFIG ?? join(env.HOME ?? homedir(), '.docker');
  const cfg: ManifestCreateConfig = {
    request: {
      target: finalTarget,
      tags: flags.tag.length > 0 ? flags.tag : file.tags,
      sources,
      compose: {
        ...DEFAULT_COMPOSE_OPTIONS,
        indexType: enumFlag<IndexType>('index-type', flags.indexType, INDEX_TYPES) ?? file.indexType ?? 'auto',
        attestations: enumFlag<AttestationMode>('attestations', flags.attestations, ATTESTATION_MODES) ?? file.attestations ?? 'keep',
        created: flags.created ?? file.created ?? 'none',
        annotations: { ...file.annotations, ...parseAnnotationArgs(flags.annotation) },
        allowMixed: flags.allowMixed === true,
        allowDuplicatePlatforms: flags.allowDuplicatePlatforms === true,
        forcePlatform: flags.forcePlatform === true,
        sourceDateEpoch: env.SOURCE_DATE_EPOCH,
      },
      dryRun: flags.dryRun === true,
      allowCrossRegistry: flags.allowCrossRegistry === true,
    },
    hosts,
    dockerConfigFile: flags.registryConfig ? resolve(flags.registryConfig) : join(dockerConfigDir, 'config.json'),
    explicitCredentials,
  };
  if (flags.metadataFile) cfg.metadataFile = resolve(flags.metadataFile);
  if (flags.uploadChunkSize) {
    const n = Number(flags.uploadChunkSize);
    if (!Number.isInteger(n) || n < 1024) throw new KilnError('oci.flag_invalid', '--upload-chunk-size must be a whole number of bytes ≥ 1024', { hint: 'e.g. --upload-chunk-size 8388608' });
    cfg.chunkSize = n;
  }
  if (flags.concurrency) {
    const n = Number(flags.concurrency);
    if (!Number.isInteger(n) || n < 1 || n > 64) throw new KilnError('oci.flag_invalid', '--concurrency must be 1-64', { hint: 'e.g. --concurrency 4' });
    cfg.request.concurrency = n;
  }
  return cfg;
}

function describeEvent(e: ManifestCreateEvent): string | undefined {
  switch (e.kind) {
    case 'resolved':
      return `source ${e.position}: ${e.ref} → ${e.digest}`;
    case 'composed':
      return `index ${e.digest} (${e.mediaType}, ${e.size} bytes)`;
    case 'blob':
      return e.how === 'present' ? undefined : `blob ${e.digest.slice(0, 19)} ${e.how}`;
    case 'child':
      return `manifest ${e.digest} ${e.how === 'present' ? 'already in the target' : 'pushed'}`;
    case 'referrers':
      return `referrers tag ${e.tag} updated`;
    case 'index':
      return `index pushed by digest`;
    case 'tag':
      return `tag ${e.tag} pushed`;
    case 'verified':
      return `tag ${e.tag} read back and matched`;
    case 'warning':
      return undefined;
  }
}

export function registerManifest(program: Command, out: () => Output): void {
  const manifest = program.command('manifest').description('multi-arch images: compose per-architecture images into one index');
  manifest
    .command('create')
    .description('compose per-architecture images (pushed by digest) into a multi-arch index, push it under tags, and print its digest')
    .argument('[target]', 'target repository, e.g. ghcr.io/org/app (no tag: use --tag)')
    .argument('[sources...]', 'per-architecture images: REF, a bare sha256 digest in the target repository, or REF,platform=os/arch[/variant]')
    .option('-t, --tag <tag>', 'tag to push the index under (repeatable)', collect, [])
    .option('-f, --file <path>', 'read target, tags, sources and options from a YAML file')
    .option('--annotation <key=value>', 'index annotation (repeatable; makes the index OCI)', collect, [])
    .option('--index-type <type>', 'auto | oci | docker (auto: a Docker list only when every child is Docker and nothing needs OCI)')
    .option('--attestations <mode>', 'keep | drop the attestation entries of index sources (default keep)')
    .option('--created <when>', 'none | now | max-child | source-date-epoch | an RFC 3339 time (default none)')
    .option('--dry-run', 'resolve and compose, print the digest and the index, push nothing')
    .option('--metadata-file <path>', 'write {mediaType, digest, size, tags, platforms, …} as JSON')
    .option('--allow-mixed', 'allow Docker and OCI children in one index')
    .option('--allow-cross-registry', 'allow sources on another registry (their blobs are streamed)')
    .option('--allow-duplicate-platforms', 'allow two images with the same platform')
    .option('--force-platform', 'let a platform override contradict the image config')
    .option('--plain-http <host>', 'reach this non-loopback registry over plain HTTP (repeatable)', collect, [])
    .option('--registry-config <path>', 'Docker config.json with credentials (default $DOCKER_CONFIG/config.json or ~/.docker/config.json)')
    .option('--upload-chunk-size <bytes>', 'upload blobs larger than this in chunks (default 16 MiB)')
    .option('--concurrency <n>', 'parallel registry operations (default 4)')
    .action(async (target: string | undefined, sourceArgs: string[], flags: CreateFlags) => {
      const o = out();
      const cfg = await loadManifestCreateConfig(target, sourceArgs, flags, process.env);
      const client = new RegistryClient({
        credentials: makeDockerConfigCredentials({ configFile: cfg.dockerConfigFile, explicit: cfg.explicitCredentials }),
        hosts: cfg.hosts,
        ...(cfg.chunkSize ? { chunkSize: cfg.chunkSize } : {}),
        onRetry: (r) => o.progress(`retrying ${r.method} ${r.url} in ${r.delayMs} ms (${r.reason})`),
        userAgent: 'kiln manifest create',
      });
      try {
        const result = await createManifest(cfg.request, {
          client,
          now: () => new Date(),
          onEvent: (e) => {
            if (e.kind === 'warning') return o.warn(e.message);
            const line = describeEvent(e);
            if (line) o.progress(line);
          },
        });
        o.done();
        o.data(result.digest);
        if (cfg.request.dryRun) o.data(new TextDecoder().decode(result.bytes));
        for (const e of result.composition.entries) {
          o.info(e.role === 'image' ? `${formatPlatform(e.platform).padEnd(16)} ${e.digest}` : `attestation      ${e.digest} → ${e.describes ?? ''}`);
        }
        if (cfg.metadataFile) await writeFile(cfg.metadataFile, `${JSON.stringify(manifestMetadata(result), null, 2)}\n`);
        if (result.pushed) o.info(`pushed ${result.tags.map((t) => `${cfg.request.target}:${t}`).join(', ')} (every tag read back and matched)`);
        else o.info('dry run: nothing pushed');
      } finally {
        o.done();
        await client.close();
      }
    });
}
