import { KilnError } from './errors.ts';

const UNITS: Record<string, number> = {
  '': 1,
  B: 1,
  K: 1024,
  KB: 1024,
  KIB: 1024,
  M: 1024 ** 2,
  MB: 1024 ** 2,
  MIB: 1024 ** 2,
  G: 1024 ** 3,
  GB: 1024 ** 3,
  GIB: 1024 ** 3,
  T: 1024 ** 4,
  TB: 1024 ** 4,
  TIB: 1024 ** 4,
};

/**
 * Parses a size such as `512M`, `2G`, `10GiB` or `1.5G` into bytes (binary units: 1G = 1024^3).
 * A bare number is bytes.
 */
export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m?.[2]?.toUpperCase();
  const factor = unit === undefined ? undefined : UNITS[unit];
  if (!m || factor === undefined) {
    throw new KilnError('input.bad_size', `${what} "${text}" is not a size`, {
      hint: `write it as a number with a unit, for example 512M, 2G or 10G`,
    });
  }
  const bytes = Math.round(Number(m[1]) * factor);
  if (!Number.isFinite(bytes) || bytes <= 0) {
    throw new KilnError('input.bad_size', `${what} "${text}" must be greater than zero`, {
      hint: 'write it as a number with a unit, for example 512M, 2G or 10G',
    });
  }
  return bytes;
}

export function formatSize(bytes: number): string {
  const units = ['B', 'K', 'M', 'G', 'T'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1 && v % 1024 === 0) {
    v /= 1024;
    i++;
  }
  if (i === 0 && bytes >= 1024) return `${(bytes / 1024 ** 2).toFixed(1)}M`;
  return `${v}${units[i]}`;
}

/** Parses a duration such as `90s`, `10m`, `1h30m`, `14d` or a bare number of seconds into milliseconds. */
export function parseDuration(text: string, what = 'duration'): number {
  const t = text.trim();
  if (/^\d+(\.\d+)?$/.test(t)) return Math.round(Number(t) * 1000);
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let matched = 0;
  for (let m = re.exec(t); m; m = re.exec(t)) {
    const n = Number(m[1]);
    const unit = m[2];
    total += n * (unit === 'ms' ? 1 : unit === 's' ? 1000 : unit === 'm' ? 60_000 : unit === 'h' ? 3_600_000 : 86_400_000);
    matched = re.lastIndex;
  }
  if (matched !== t.length || t.length === 0 || total <= 0) {
    throw new KilnError('input.bad_duration', `${what} "${text}" is not a duration`, {
      hint: 'write it like 30s, 10m or 1h30m',
    });
  }
  return Math.round(total);
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(2)}s`;
  const m = Math.floor(ms / 60_000);
  const s = Math.round((ms % 60_000) / 1000);
  return `${m}m${s}s`;
}
