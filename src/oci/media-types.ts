/** OCI and Docker media types the composer and the registry client deal with. */
export const MediaType = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  dockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  ociEmpty: 'application/vnd.oci.empty.v1+json',
  attestationArtifact: 'application/vnd.docker.attestation.manifest.v1+json',
} as const;

/**
 * The Accept header for every manifest request. distribution 2.8 answers 404 for an OCI index unless the
 * index type is listed, and rewrites a Docker list for clients that don't accept lists: list all four.
 */
export const MANIFEST_ACCEPT = [MediaType.ociIndex, MediaType.dockerList, MediaType.ociManifest, MediaType.dockerManifest].join(', ');

export function isIndexType(mt: string | undefined): boolean {
  return mt === MediaType.ociIndex || mt === MediaType.dockerList;
}

export function isImageManifestType(mt: string | undefined): boolean {
  return mt === MediaType.ociManifest || mt === MediaType.dockerManifest;
}

export function isSchema1Type(mt: string | undefined): boolean {
  return mt === MediaType.dockerSchema1 || mt === MediaType.dockerSchema1Signed || mt === 'application/json';
}

/** Docker-family manifest types (a Docker list may only hold these). */
export function isDockerManifestType(mt: string | undefined): boolean {
  return mt === MediaType.dockerManifest;
}

/** Layers that must not be copied between registries (Windows base layers and the like). */
export function isNonDistributableLayer(mt: string | undefined): boolean {
  return mt !== undefined && (mt.includes('.foreign.') || mt.includes('nondistributable'));
}
