/**
 * Which Debian archive the host's apt uses, read from its sources (one-line sources.list and deb822
 * .sources files), so guest root file systems come from the same mirror the host already trusts.
 */
export interface DebianSource {
  uri: string;
  suite: string;
}

interface Entry {
  types: string[];
  uris: string[];
  suites: string[];
}

function parseOneLine(text: string): Entry[] {
  const out: Entry[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) continue;
    // deb [options] uri suite components...
    const m = /^(deb|deb-src)\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line);
    if (m) out.push({ types: [m[1]!], uris: [m[2]!], suites: [m[3]!] });
  }
  return out;
}

function parseDeb822(text: string): Entry[] {
  const out: Entry[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    let last = '';
    for (const raw of stanza.split('\n')) {
      if (raw.startsWith('#')) continue;
      if (/^\s/.test(raw) && last) {
        fields.set(last, `${fields.get(last) ?? ''} ${raw.trim()}`);
        continue;
      }
      const i = raw.indexOf(':');
      if (i <= 0) continue;
      last = raw.slice(0, i).trim().toLowerCase();
      fields.set(last, raw.slice(i + 1).trim());
    }
    if ((fields.get('enabled') ?? 'yes').toLowerCase() === 'no') continue;
    const words = (k: string) => (fields.get(k) ?? '').split(/\s+/).filter(Boolean);
    if (fields.has('uris')) out.push({ types: words('types'), uris: words('uris'), suites: words('suites') });
  }
  return out;
}

/**
 * The first binary ("deb") source for Debian's main archive: not the security archive, and a release
 * suite (bookworm), not an update pocket (bookworm-updates). `files` are [name, content] pairs.
 */
export function pickDebianSource(files: [name: string, content: string][]): DebianSource | undefined {
  const entries = files.flatMap(([name, text]) => (name.endsWith('.sources') ? parseDeb822(text) : parseOneLine(text)));
  for (const e of entries) {
    if (!e.types.includes('deb')) continue;
    for (const uri of e.uris) {
      if (/security/.test(uri) || !/^https?:\/\//.test(uri)) continue;
      const suite = e.suites.find((s) => !s.includes('-') && !s.includes('/'));
      if (suite) return { uri, suite };
    }
  }
  return undefined;
}
